"""One parity run: fv against the live reference or against its goldens, every stage, reports written."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from fv.compare import EXACT, ParityResult, StageResult, Tolerance, compare_all, tolerance_for
from fv.golden import golden_dir, load_goldens, to_jsonable
from fv.meta import run_meta
from fv.models import LoadedModel
from fv.reference import InjectionNoOp, Reference
from fv.report import write_parity_reports
from fv.stages import STAGES, Params, StageValues, fv_stage_values, src_stage_values, trial_key
from fv.trials import FixedTrials

SNAPSHOT_ROOT = Path(__file__).resolve().parents[1] / "snapshots"


def _normalize(sv: StageValues) -> StageValues:
    """JSON-side values as a golden file would hold them, so live and golden sources compare alike."""
    out = StageValues(values=dict(sv.values), durations=dict(sv.durations))
    for k in ("prompt", "slot", "top_heads", "injection"):
        out.values[k] = to_jsonable(sv.values[k])
    return out


@dataclass
class ParityRun:
    lm: LoadedModel
    trials: FixedTrials
    params: Params
    source: str  # "reference" or "golden"
    src: StageValues
    fv: StageValues
    tolerance: Tolerance
    result: ParityResult
    report_paths: dict[str, Path] = field(default_factory=dict)
    injection_error: str | None = None

    @property
    def trial_keys(self) -> list[str]:
        return [trial_key(t) for t in self.trials.subset(self.params.max_trials)]


def default_out_dir(root: Path, trials: FixedTrials) -> Path:
    return Path(root) / trials.dataset_name / trials.id


def src_from_reference(ref: Reference, lm: LoadedModel, trials: FixedTrials, params: Params) -> tuple[StageValues, str | None]:
    subset = trials.subset(params.max_trials)
    meta = trials.meta
    error = None
    try:
        ref.require_live_injection(lm, params.edit_layer)
    except InjectionNoOp as exc:
        error = str(exc)
    sv = src_stage_values(ref, lm, subset, params, meta.get("prefixes"), meta.get("separators"))
    return _normalize(sv), error


def run_parity(lm: LoadedModel, trials: FixedTrials, params: Params, ref: Reference | None, out_dir: Path | None,
               snapshot_root: Path = SNAPSHOT_ROOT, fv_values: StageValues | None = None) -> ParityRun:
    """Compare every stage. With ``ref`` the gate is exact; from goldens it uses the dtype's tolerance."""
    subset = trials.subset(params.max_trials)
    if ref is not None:
        src, inj_error = src_from_reference(ref, lm, trials, params)
        source, tol = "reference", EXACT if params.mode == "exact" else tolerance_for(lm.dtype, exact=False)
        notes = list(ref.notes) + (["--src-compat: the reference's FV addition applied to tensor outputs"] if ref.compat else [])
    else:
        folder = golden_dir(snapshot_root, lm.name, trials.id, len(subset))
        src = load_goldens(folder)
        if src is None:
            raise FileNotFoundError(f"no goldens in {folder}")
        inj_error = None
        source, tol = "golden", tolerance_for(lm.dtype, exact=False)
        prov = folder.parent / f"{folder.name}.meta.json"
        notes = json.loads(prov.read_text()).get("notes", []) if prov.is_file() else []
    fvv = _normalize(fv_values if fv_values is not None else fv_stage_values(lm, subset, params, trials.meta.get("prefixes"), trials.meta.get("separators")))
    keys = [trial_key(t) for t in subset]
    meta = run_meta(lm, trials, params.as_dict(), source=source, tolerance=tol.__dict__, src_notes=notes,
                    src_compat=bool(ref.compat) if ref is not None else any("src-compat" in n for n in notes))
    result = compare_all(src, fvv, tol, keys, meta)
    if inj_error:
        i = STAGES.index("injection")
        result.stages[i] = StageResult("injection", "FAIL", 2 * len(keys), float("inf"), detail=[inj_error])
    run = ParityRun(lm, trials, params, source, src, fvv, tol, result, injection_error=inj_error)
    if out_dir is not None:
        run.report_paths = write_parity_reports(out_dir, result, src.values["injection"], fvv.values["injection"])
    return run


def compare_with(run: ParityRun, fv_values: StageValues) -> ParityResult:
    """Compare another fv computation with the same source values (used to prove a perturbation is caught)."""
    return compare_all(run.src, _normalize(fv_values), run.tolerance, run.trial_keys, {})
