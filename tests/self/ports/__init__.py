"""Ports as sides: a user's own runtime gated by its files (``fv.ports``).

Checks that ``fv.ports.my_fv_project_files.UserFilesSide`` reads the artifacts folder that
``sunsikham/my_fv_project``'s relation q-wise pipeline wrote (committed under ``fixtures/ports/my_fv_project``),
maps it onto fv's stage shapes and trial keys, refuses a folder missing a required file in one line, and that a
real comparison with fv's runtime on the same tiny Llama and the same trials agrees where it should and names the
first divergence where a value is changed.
"""
