"""Ports of the reference as sides of a comparison.

A port is another runtime that computes (some of) the reference's stages: a user's own re-implementation of
"Function Vectors in Large Language Models" in their project. A port side implements the protocol of
``fv.parity.sides`` (``describe`` and ``stage_values``, plain data only) so that ``fv.parity.run.run_parity`` can
gate it against fv's runtime or the live reference. A port side may compute live (in a process of its own) or, as
here, read the files the port wrote; it returns only the stages whose mapping onto fv's stage shapes is exact and
names every stage it leaves out, and why, in ``describe()["notes"]`` (stages a side lacks are not compared).

- ``fv.ports.functions``: a port by its functions (one method per stage), loaded by ``MODULE:OBJECT`` from its
  project root in a process of its own (``fv.ports.worker``, which imports nothing of fv), isolated or chained;
  ``fv.ports.fv_runtime.FvRuntimePort``: fv's own runtime as such a port.
- ``fv.ports.my_fv_project_files.UserFilesSide``: the artifacts folder that ``sunsikham/my_fv_project``'s
  relation q-wise pipeline writes per q (``<relation>/<Q>/artifacts/``).
- ``fv.ports.my_fv_project_layout``: fv's runs written in that layout (``--layout my_fv_project``).

See docs/ports.md.
"""
