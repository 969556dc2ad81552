"""The golden check of one artifact of a parity run, apart from the test runner that acts on it.

``golden_check`` decides, for an artifact (``GOLDEN_ARTIFACTS``) of a run, what a golden test does: compare fv's
value with the golden file under the dtype's tolerance; with ``--snapshot-update`` write the reference's value
(never fv's) with the meta that records the model's and trials' identity; or skip or fail, saying why. The
pytest plugin turns the answer into ``pytest.skip``/``pytest.fail`` or a snapshot assertion, so this module knows
neither pytest nor syrupy's internals (the golden's file name comes from ``fv.parity.golden.EXTENSIONS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fv.errors import FVError
from fv.parity.golden import EXTENSIONS, GOLDEN_ARTIFACTS, artifact_value, golden_dir

# the words a skipped golden test starts with when no golden was needed: the live reference was compared instead
NO_GOLDEN = "[fv: no golden, compared live]"


@dataclass
class GoldenCheck:
    """What a golden test does: ``action`` is ``compare`` (``value`` against the golden through ``extension``, a
    syrupy extension class), ``pass``, ``skip`` or ``fail`` (``message`` says why), or ``mismatch`` (the values
    differ: ``message`` lists where)."""

    action: str
    message: str = ""
    value: Any = None
    extension: Any = None


def shape_problem(run: Any, artifact: str, value: Any) -> str | None:
    """Why ``value`` cannot be ``artifact`` of this run (its shape or layout), or None. Shapes: mean activations
    (layers, heads, slots, head_dim), indirect effects (trials, layers, heads), the FV (d_model,); dummy labels
    one per slot, the last the query's predictive token."""
    info, n_slots = run.lm.info, len(run.fv.values["slot"]["dummy_labels"])
    want = {"mean_activations": (info.n_layers, info.n_heads, n_slots, info.head_dim),
            "indirect_effect": (len(run.trial_keys), info.n_layers, info.n_heads), "fv": (info.d_model,)}.get(artifact)
    if want is not None and tuple(getattr(value, "shape", ())) != want:
        return f"{artifact}: expected shape {want}, found {tuple(getattr(value, 'shape', ()))}"
    if artifact == "dummy_labels":
        if [p for p, _ in value] != list(range(n_slots)):
            return f"dummy_labels: expected positions 0..{n_slots - 1}, found {[p for p, _ in value]}"
        if value[-1][1] != "query_predictive_token":
            return f"dummy_labels: expected the last slot to be query_predictive_token, found {value[-1][1]!r}"
    return None


def traded_heads(run: Any, folder: Path, artifact: str) -> str | None:
    """Why the FV and injection goldens in ``folder`` cannot be compared with this run, or None: this run's top heads
    are not the goldens' while its ``top_heads`` still match them within the dtype's tolerance (heads the indirect
    effects cannot tell apart traded places), so the FV sums other heads. Named by its cause where fv knows one: a
    transformers release that computes this model's logits in another dtype than the goldens' did
    (``fv.compat.logits_release_difference``: 4.44/4.45 upcast a half-precision Llama's logits to float32, 4.46 on
    keep them), else indirect effects below the dtype's resolution (the degenerate fp16 families), whose last bits
    differ between CPU kernels and releases. A trade the effects can tell apart fails the ``top_heads`` golden, and
    the FV is then compared as usual; so is every FV whose top heads agree."""
    import json

    from fv import compat
    from fv.parity.golden import meta_path
    from fv.parity.snapshot import golden_extension
    from fv.parity.tolerance import tolerance_for

    heads_file = folder / "top_heads.json"
    if artifact not in ("fv", "injection") or not heads_file.is_file() or not meta_path(folder).is_file():
        return None
    golden = [tuple(h[:2]) for h in json.loads(heads_file.read_text())]
    ours = [tuple(h[:2]) for h in run.fv.values["top_heads"]]
    if sorted(golden) == sorted(ours):
        return None
    tol = tolerance_for(run.lm.dtype, exact=False).for_stage("top_heads")
    ext = golden_extension(folder, "json", tol, "top_heads")()
    if not ext.matches(serialized_data=ext.serialize(run.fv.values["top_heads"]), snapshot_data=heads_file.read_text()):
        return None  # the top_heads golden fails: a real trade, and the FV is compared (and fails) as usual
    made_with = json.loads(meta_path(folder).read_text()).get("transformers_version")
    why = compat.logits_release_difference(run.lm.info.model_type, run.lm.dtype, made_with) or (
        f"{run.lm.name}'s indirect effects cannot tell its top heads apart within {tol.describe()} (their last bits "
        "differ between CPU kernels and releases)")
    return (f"golden {artifact} not comparable here: {why}; top heads the indirect effects cannot tell apart traded "
            "places (the top_heads golden passes), so the FV sums other heads. The live reference (M2) checks this "
            "machine and release")


def golden_file(folder: Path, artifact: str) -> Path:
    """The file holding ``artifact`` in a golden folder."""
    return Path(folder) / f"{artifact}.{EXTENSIONS[GOLDEN_ARTIFACTS[artifact][0]]}"


def golden_check(run: Any, artifact: str, update: bool, snapshot_root: Path | None = None) -> GoldenCheck:
    """What the golden test of ``artifact`` does for ``run`` (a ``ParityRun``); with ``update``, writes the goldens'
    meta first (the snapshot files are written by the runner's snapshot assertion)."""
    from fv.io import write_json
    from fv.parity.snapshot import golden_extension
    from fv.parity.tolerance import EXACT, tolerance_for
    from fv.parity.user_goldens import USER_GOLDENS, artifact_problems, imported_from
    from fv.paths import SNAPSHOT_ROOT

    if run.source == USER_GOLDENS:  # --golden-dir: the user's files, not the snapshots
        if update:
            return GoldenCheck("fail", "--snapshot-update writes goldens from the live reference; drop --golden-dir (or make "
                                       "snapshots of a user's goldens with `fv golden import`).")
        problems = artifact_problems(run, artifact)
        if problems is None:
            return GoldenCheck("skip", f"{run.other_side} hold no {artifact} (src writes mean activations, dummy labels, indirect effects)")
        if problems:
            return GoldenCheck("mismatch", f"{artifact} differs from {run.other_side}:\n" + "\n".join(problems))
        return GoldenCheck("pass")
    folder = golden_dir(snapshot_root or SNAPSHOT_ROOT, run.lm.name, run.trials.id, len(run.trial_keys))
    kind, stage = GOLDEN_ARTIFACTS[artifact]
    # an update writes the reference's value unless it is bit-identical to the golden, so a golden and its meta
    # always describe the same run; a comparison allows the dtype's tolerance
    ext = golden_extension(folder, kind, EXACT if update else tolerance_for(run.lm.dtype, exact=False).for_stage(stage), stage)
    if update:
        if run.source != "reference":
            return GoldenCheck("fail", "refusing to write goldens without the reference: goldens are the reference's numbers. "
                                       "Pass --src-root <reference src>.")
        from fv.parity.golden import numerics
        from fv.parity.identity import golden_identity

        # the model's and trials' identity: replaying these goldens on another model is refused (fv.parity.identity)
        identity = {**golden_identity(run.lm, run.trials, run.trials.subset(run.params.max_trials)),
                    "recorded_by": "written with the goldens by pytest --snapshot-update"}
        write_json(folder.parent / f"{folder.name}.meta.json", {**run.result.meta, "notes": run.result.meta["src_notes"],
                                                                "identity": identity, "numerics": numerics(),
                                                                "replay_tolerance": tolerance_for(run.lm.dtype, exact=False).__dict__})
        value = artifact_value(run.src, artifact)
        problem = shape_problem(run, artifact, value)
        return GoldenCheck("mismatch", problem) if problem else GoldenCheck("compare", value=value, extension=ext)
    value = artifact_value(run.fv, artifact)
    problem = shape_problem(run, artifact, value)
    if problem:
        return GoldenCheck("mismatch", problem)
    if folder.is_dir() and run.source != "golden":  # (the engine checked the goldens it replayed) goldens of another
        from fv.parity.golden import check_identity  # model are refused here too, even beside a live reference

        try:
            check_identity(folder, run.lm, run.trials, run.trials.subset(run.params.max_trials))
        except FVError as exc:
            return GoldenCheck("fail", str(exc))
    why = traded_heads(run, folder, artifact)
    if why:
        return GoldenCheck("skip", why)
    if not golden_file(folder, artifact).is_file():
        if imported_from(folder):
            return GoldenCheck("skip", f"{folder} holds goldens imported from {imported_from(folder)}, which have no {artifact}")
        if run.source == "reference":
            # the live reference was the other side and its stages were compared (M2/M7): a model or trials without
            # goldens (a user's) is compared live, and nothing demands a golden
            return GoldenCheck("skip", f"{NO_GOLDEN} {run.lm.name} x {run.trials.id}: no golden {artifact} in {folder}; compared live with the reference")
        return GoldenCheck("fail", f"golden {artifact} missing in {folder}")
    return GoldenCheck("compare", value=value, extension=ext)
