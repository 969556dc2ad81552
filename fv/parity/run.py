"""One parity run: fv against the live reference or against its goldens, every stage, reports written."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from fv.meta import run_meta
from fv.model.loading import LoadedModel
from fv.parity.compare import ParityResult, StageResult, compare_all
from fv.parity.golden import check_identity, golden_dir, load_goldens, to_jsonable
from fv.parity.report import name_constant_sides, write_parity_reports
from fv.parity.stages import STAGES, Params, StageValues, fv_stage_values, trial_key
from fv.parity.tolerance import EXACT, Tolerance, tolerance_for
from fv.paths import SNAPSHOT_ROOT
from fv.runtime.trials import FixedTrials, Trial

if TYPE_CHECKING:
    from fv.parity.src_cache import SrcCache
    from fv.parity.user_goldens import GoldenSource


@dataclass
class LiveSource:
    """The other side computed live: ``compute`` returns its stage values and, when its injection cannot be
    trusted, why. Built by ``fv.reference`` so this engine never needs the reference's names."""

    compute: Callable[[LoadedModel, Sequence[Trial], Params, dict, dict], tuple[StageValues, str | None]]
    notes: list[str]
    compat: bool
    description: str
    # run before any stage: refuses, in one line, a pairing of model and trials the other side cannot run, and
    # returns what the report records of that side (its model mode, dtype, attention, BOS rule)
    check: Callable[[LoadedModel, FixedTrials], dict] | None = None
    # what its values depend on beyond the trials and parameters (its files, the model it computes on), given
    # fv's model and a folder for remembered weight hashes; with ``cache`` set, the values are kept on disk
    key_parts: Callable[[LoadedModel, Path | None], dict] | None = None
    cache: "SrcCache | None" = None
    # the FV and injection stages recomputed by the other side for a given head list on its own mean activations
    # (``{"fv", "injection"}``): where fv's top heads differ from its own only by tied heads (fast mode)
    refit: Callable[[LoadedModel, Sequence[Trial], Params, torch.Tensor, list], dict] | None = None


def _normalize(sv: StageValues) -> StageValues:
    """JSON-side values as a golden file would hold them, so live and golden sources compare alike."""
    out = StageValues(values=dict(sv.values), durations=dict(sv.durations))
    for k in ("prompt", "slot", "top_heads", "injection"):
        out.values[k] = to_jsonable(sv.values[k])
    return out


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


def default_out_dir(root: Path, trials: FixedTrials) -> Path:
    """The parity run's default output folder: ``<root>/<dataset name>/<trials id>``."""
    return Path(root) / trials.dataset_name / trials.id


def src_from_source(source: LiveSource, lm: LoadedModel, trials: FixedTrials, params: Params) -> tuple[StageValues, str | None]:
    """The source's stage values and its injection error (or None), computed or read from its cache."""
    sv, error, _ = src_with_origin(source, lm, trials, params)
    return sv, error


def src_with_origin(source: LiveSource, lm: LoadedModel, trials: FixedTrials, params: Params
                    ) -> tuple[StageValues, str | None, str]:
    """The source's values, its injection error, and whether they were computed or read from its cache."""
    def compute() -> tuple[StageValues, str | None]:
        sv, error = source.compute(lm, trials.subset(params.max_trials), params, trials.meta.get("prefixes"),
                                   trials.meta.get("separators"))
        return _normalize(sv), error

    if source.cache is None or source.key_parts is None:
        return (*compute(), "computed")
    from fv.parity.src_cache import cache_key

    key = cache_key(source.key_parts(lm, source.cache.root / "weights_sha256"), trials, params)
    return source.cache.get_or_compute(key, compute)


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
               stage_functions: dict[str, str] | None = None, golden: GoldenSource | None = None) -> ParityRun:
    """Compare every stage. With ``ref`` the gate is exact; from goldens (``golden``: a user's golden folder, else
    the snapshot folder) it uses the goldens' dtype's tolerance. Stages the goldens do not hold are not compared."""
    subset = trials.subset(params.max_trials)
    side_facts = ref.check(lm, trials) if ref is not None and ref.check is not None else {}
    if ref is not None:
        src, inj_error, origin = src_with_origin(ref, lm, trials, params)
        source, tol = "reference", EXACT if params.mode == "exact" else tolerance_for(lm.dtype, exact=False)
        notes = list(ref.notes) + (["--src-compat: the reference's FV addition applied to tensor outputs"] if ref.compat else [])
        other = ref.description
    elif golden is not None:
        src, inj_error, source, tol, notes, other = golden.values, None, golden.kind, golden.tolerance, golden.notes, golden.description
        origin = golden.description
    else:
        folder = golden_dir(snapshot_root, lm.name, trials.id, len(subset))
        src = load_goldens(folder)
        if src is None:
            raise FileNotFoundError(f"no goldens in {folder}")
        identity_notes = check_identity(folder, lm, trials, subset)  # goldens of another model: refused before any stage
        inj_error = None
        prov_path = folder.parent / f"{folder.name}.meta.json"
        prov = json.loads(prov_path.read_text()) if prov_path.is_file() else {}
        # imported goldens record the dtype they were made in; the reference's own were made in the model's
        dtype = getattr(torch, prov["golden_dtype"]) if prov.get("golden_dtype") else lm.dtype
        source, tol = "golden", tolerance_for(dtype, exact=False)
        notes = prov.get("notes", []) + identity_notes
        other = f"goldens in {folder}" + (f" (imported from {prov['imported_from']})" if prov.get("imported_from") else "")
        origin = f"goldens {folder}"
    fvv = _normalize(fv_values if fv_values is not None else fv_stage_values(lm, subset, params, trials.meta.get("prefixes"), trials.meta.get("separators")))
    fvv = _as_held(src, fvv)
    keys = [trial_key(t) for t in subset]
    if ref is not None and ref.refit is not None and tol is not EXACT:
        src, note = _refit_on_tied_heads(ref, lm, subset, params, src, fvv, tol, keys, stage_functions)
        notes += [note] if note else []
    meta = run_meta(lm, trials, params.as_dict(), source=source, other_side=other, tolerance=tol.__dict__, src_notes=notes,
                    src_compat=bool(ref.compat) if ref is not None else any("src-compat" in n for n in notes),
                    sides={source: origin, "fv": "computed"}, **side_facts)
    result = compare_all(src, fvv, tol, keys, meta, stage_functions, lone_slots=_lone_slots(lm, subset, src))
    name_constant_sides(result, src, fvv, {"reference": "the reference's", "golden": "the goldens'"}.get(source, f"the {source}'"))
    if inj_error:
        i = STAGES.index("injection")
        result.stages[i] = StageResult("injection", "FAIL", 2 * len(keys), float("inf"), detail=[inj_error])
    run = ParityRun(lm, trials, params, source, src, fvv, tol, result, injection_error=inj_error, other_side=other,
                    sides=meta["sides"])
    if out_dir is not None:
        run.report_paths = write_parity_reports(out_dir, result, src.values.get("injection", {}), fvv.values["injection"])
    return run


def _heads(values: StageValues) -> list[tuple[int, int]]:
    return [(int(h[0]), int(h[1])) for h in values.values.get("top_heads") or []]


def _refit_on_tied_heads(ref: LiveSource, lm: LoadedModel, subset: Sequence[Trial], params: Params, src: StageValues,
                         fvv: StageValues, tol: Tolerance, keys: list[str], stage_functions: dict[str, str] | None
                         ) -> tuple[StageValues, str | None]:
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
    redone = ref.refit(lm, subset, params, src.values["mean_activations"], [list(h) for h in ours])
    out = StageValues(values={**src.values, **redone}, durations=dict(src.durations))
    out.values["injection"] = to_jsonable(out.values["injection"])
    note = (f"top heads: fv's list differs from the other side's only by heads whose mean indirect effects tie within "
            f"{tol.name}'s allowance ({', '.join(f'L{l}H{h}' for l, h in traded)} trade places); the fv and injection "
            "stages are compared with the other side's own compute_function_vector and function_vector_intervention "
            "fed fv's head list")
    return out, note


def compare_with(run: ParityRun, fv_values: StageValues) -> ParityResult:
    """Compare another fv computation with the same source values (used to prove a perturbation is caught)."""
    return compare_all(run.src, _as_held(run.src, _normalize(fv_values)), run.tolerance, run.trial_keys, {},
                       {s.name: s.reference_function for s in run.result.stages},
                       lone_slots=_lone_slots(run.lm, run.trials.subset(run.params.max_trials), run.src))
