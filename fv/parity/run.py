"""One parity run: two sides (``fv.parity.sides``: fv's runtime and the live reference, its goldens or a user's),
every stage compared, reports written."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fv.meta import run_meta
from fv.model.loading import LoadedModel
from fv.parity.compare import ParityResult, StageResult, compare_all
from fv.parity.golden import to_jsonable
from fv.parity.report import name_constant_sides, write_parity_reports
from fv.parity.sides import (  # noqa: F401  (LiveSource, src_with_origin: re-exported for the reference's adapter)
    GivenSide,
    LiveSource,
    RuntimeSide,
    Side,
    dtype_of,
    normalize,
    other_side,
    src_with_origin,
    trials_data,
    values_of,
)
from fv.parity.stages import STAGES, Params, StageValues, trial_key
from fv.parity.tolerance import EXACT, Tolerance, tolerance_for
from fv.paths import SNAPSHOT_ROOT
from fv.runtime.trials import FixedTrials

if TYPE_CHECKING:
    from fv.parity.user_goldens import GoldenSource


def _as_held(src: StageValues, fvv: StageValues) -> StageValues:
    """fv's values cut to what the goldens hold: a user's slot golden is the dummy labels alone."""
    if "slot" in src.values and "trials" not in src.values["slot"]:
        fvv.values["slot"] = {"dummy_labels": fvv.values["slot"]["dummy_labels"]}
    return fvv


@dataclass
class ParityRun:
    lm: LoadedModel
    trials: FixedTrials
    params: Params
    source: str  # "reference", "golden" (the snapshots) or "user goldens" (--golden-dir)
    src: StageValues
    fv: StageValues
    tolerance: Tolerance
    result: ParityResult
    report_paths: dict[str, Path] = field(default_factory=dict)
    injection_error: str | None = None
    other_side: str = ""  # in words: which live reference, or which golden folder
    sides: dict[str, str] = field(default_factory=dict)  # per side: computed, read from the cache, or goldens

    @property
    def trial_keys(self) -> list[str]:
        return [trial_key(t) for t in self.trials.subset(self.params.max_trials)]


def default_out_dir(root: Path, trials: FixedTrials, model: str | None = None) -> Path:
    """The parity run's default output folder: ``<root>/<dataset name>/<trials id>``, and ``/<model>`` below it when
    the trials id does not name the model (a relation q's trials, made alike for every model), so two models'
    reports never share a folder."""
    folder = Path(root) / trials.dataset_name / trials.id
    return folder if model is None or trials.id.endswith(f"_{model}") else folder / model


def src_from_source(source: LiveSource, lm: LoadedModel, trials: FixedTrials, params: Params) -> tuple[StageValues, str | None]:
    """The source's stage values and its injection error (or None), computed or read from its cache."""
    sv, error, _ = src_with_origin(source, lm, trials, params)
    return sv, error


def _lone_slots(lm: LoadedModel, subset: list, src: StageValues) -> list[int]:
    """The slots a lone SentencePiece ``▁`` token of these trials is averaged into (slot labels from the source's
    slot stage); empty for byte-level tokenizers."""
    from fv.parity.pattern import lone_metaspace_slot_indices

    dummy = [(int(p), str(label)) for p, label in ((src.values.get("slot") or {}).get("dummy_labels") or [])]
    if not dummy or getattr(lm, "tokenizer", None) is None:
        return []
    return lone_metaspace_slot_indices(subset, lm.tokenizer, lm.prepend_bos, dummy)


def run_parity(lm: LoadedModel, trials: FixedTrials, params: Params, ref: LiveSource | None, out_dir: Path | None,
               snapshot_root: Path = SNAPSHOT_ROOT, fv_values: StageValues | None = None,
               stage_functions: dict[str, str] | None = None, golden: GoldenSource | None = None,
               other: Side | None = None, ours: Side | None = None) -> ParityRun:
    """Compare every stage of two sides (``fv.parity.sides``). The other side is ``other``, else the one
    ``other_side`` chooses from ``golden`` (a user's goldens), ``ref`` (the live reference) and the snapshot folder;
    ours is fv's runtime on ``lm`` (or ``fv_values`` computed earlier) unless ``ours`` is given. Against a live
    side the gate is exact (in exact mode); against goldens it uses their dtype's tolerance. Stages the other side
    does not hold are not compared."""
    other = other if other is not None else other_side(lm, ref, golden, snapshot_root)
    ours = ours if ours is not None else (GivenSide(fv_values) if fv_values is not None else RuntimeSide(lm))
    subset = trials.subset(params.max_trials)
    data, pd = trials_data(trials), params.as_dict()
    theirs = other.describe(data, pd)  # the door: a pairing the other side cannot run is refused before any stage
    mine = ours.describe(data, pd)
    got = other.stage_values(data, pd)
    src, inj_error, origin = values_of(got), got.get("injection_error"), got.get("origin", "computed")
    source, other_words = theirs["kind"], theirs["description"]
    notes = list(got["notes"] if got.get("notes") is not None else theirs.get("notes") or [])
    live = bool(theirs.get("live")) and bool(mine.get("live"))
    tol = EXACT if live and params.mode == "exact" else tolerance_for(dtype_of(theirs.get("dtype"), lm.dtype), exact=False)
    # a side that computes stage by stage (a port) may be handed the other side's values, to compute each stage
    # from the other side's inputs (isolated)
    fv_got = ours.stage_values(data, pd, given=src.values) if getattr(ours, "takes_given", False) else ours.stage_values(data, pd)
    fvv = _as_held(src, normalize(values_of(fv_got)))
    keys = [trial_key(t) for t in subset]
    if hasattr(other, "refit") and tol is not EXACT:
        src, note = _refit_on_tied_heads(other, data, pd, src, fvv, tol, keys, stage_functions)
        notes += [note] if note else []
    meta = run_meta(lm, trials, params.as_dict(), source=source, other_side=other_words, tolerance=tol.__dict__, src_notes=notes,
                    src_compat=bool(theirs.get("compat")), sides={source: origin, mine["kind"]: fv_got.get("origin", "computed")},
                    our_side=mine.get("description"), our_notes=list(mine.get("notes") or []),
                    **{**(mine.get("facts") or {}), **(theirs.get("facts") or {})})
    result = compare_all(src, fvv, tol, keys, meta, stage_functions, lone_slots=_lone_slots(lm, subset, src))
    name_constant_sides(result, src, fvv, {"reference": "the reference's", "golden": "the goldens'"}.get(source, f"the {source}'"))
    if inj_error:
        i = STAGES.index("injection")
        result.stages[i] = StageResult("injection", "FAIL", 2 * len(keys), float("inf"), detail=[inj_error])
    run = ParityRun(lm, trials, params, source, src, fvv, tol, result, injection_error=inj_error, other_side=other_words,
                    sides=meta["sides"])
    if out_dir is not None:
        run.report_paths = write_parity_reports(out_dir, result, src.values.get("injection", {}), fvv.values.get("injection", {}))
    return run


def _heads(values: StageValues) -> list[tuple[int, int]]:
    return [(int(h[0]), int(h[1])) for h in values.values.get("top_heads") or []]


def _refit_on_tied_heads(other: Any, trials: dict, params: dict, src: StageValues, fvv: StageValues, tol: Tolerance,
                         keys: list[str], stage_functions: dict[str, str] | None) -> tuple[StageValues, str | None]:
    """Where fv's top heads differ from the other side's only by heads whose mean indirect effects tie within
    ``tol`` (the top_heads stage passes with traded ranks), the FV and injection on the other side are recomputed
    by its own functions for fv's head list: which of two tied heads is taken is not a difference between the two
    computations, and the FV of the other list would differ by a whole head. Returns the values to compare with,
    and the report's note (None when nothing was recomputed)."""
    if _heads(src) == _heads(fvv):
        return src, None
    check = compare_all(src, fvv, tol, keys, {}, stage_functions)
    if next(st for st in check.stages if st.name == "top_heads").status != "PASS":
        return src, None  # a real difference in the heads: reported as it is
    ours, theirs = _heads(fvv), _heads(src)
    traded = sorted(set(ours) ^ set(theirs))
    redone = other.refit(trials, params, src.values["mean_activations"], [list(h) for h in ours])
    if redone is None:  # this side cannot recompute them: the heads' difference is reported as it is
        return src, None
    out = StageValues(values={**src.values, **redone}, durations=dict(src.durations))
    out.values["injection"] = to_jsonable(out.values["injection"])
    note = (f"top heads: fv's list differs from the other side's only by heads whose mean indirect effects tie within "
            f"{tol.name}'s allowance ({', '.join(f'L{l}H{h}' for l, h in traded)} trade places); the fv and injection "
            "stages are compared with the other side's own compute_function_vector and function_vector_intervention "
            "fed fv's head list")
    return out, note


def compare_with(run: ParityRun, fv_values: StageValues) -> ParityResult:
    """Compare another fv computation with the same source values (used to prove a perturbation is caught)."""
    return compare_all(run.src, _as_held(run.src, normalize(fv_values)), run.tolerance, run.trial_keys, {},
                       {s.name: s.reference_function for s in run.result.stages},
                       lone_slots=_lone_slots(run.lm, run.trials.subset(run.params.max_trials), run.src))
