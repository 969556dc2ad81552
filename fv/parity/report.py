"""Parity reports on disk (docs/reference.md, "Artifacts"): the suite verdict, a per-stage table, and the injection tables."""

from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path
from typing import Any

from fv.io import write_json, write_text
from fv.lock import output_lock
from fv.parity.compare import ParityResult
from fv.parity.stages import PROMPT_SETS

# Writing the four reports takes milliseconds; two writers of one folder are pytest workers (or gate tasks)
# that computed the same (model, trials) at once, and the second's turn is that far away. Longer means a
# process stuck while holding the folder: refuse then, naming it.
REPORT_LOCK_WAIT_S = 120.0


def _num(x: float) -> float | str:
    if isinstance(x, float) and math.isnan(x):
        return "nan"  # JSON has no NaN: a stage with no finite difference says so in words
    return ("inf" if x > 0 else "-inf") if isinstance(x, float) and math.isinf(x) else x


# what a tensor stage's values are, and what an all-zero side of it means
_CONSTANT_MEANING = {
    "mean_activations": ("mean activations", "its hooks captured nothing"),
    "indirect_effect": ("indirect effects", "its intervention did not change the output"),
    "fv": ("function vector values", "no head contributed to it"),
}


def constant_side_note(stage: str, side: str, value: Any) -> str | None:
    """One line when ``value`` (a tensor stage's value on one side, named ``side``: "the reference's", "fv's")
    is identically zero or constant, e.g. "the reference's indirect effects are all exactly 0: its intervention
    did not change the output"; None otherwise, or for a stage that holds no tensor."""
    import torch

    if stage not in _CONSTANT_MEANING or not isinstance(value, torch.Tensor) or value.numel() < 2:
        return None
    what, meaning = _CONSTANT_MEANING[stage]
    flat = value.detach().reshape(-1)
    first = flat[0]
    if not bool((flat == first).all()):
        return None
    n = flat.numel()
    if float(first) == 0.0:
        return f"{side} {what} are all exactly 0 ({n} values): {meaning}"
    return f"{side} {what} are all the same value {float(first)!r} ({n} values): they cannot rank or tell anything apart"


def name_constant_sides(result: ParityResult, src: Any, fv: Any, other_side: str = "the reference's") -> None:
    """Put a constant side's line first in each failed stage's detail, so the stage summary says it (an all-zero
    matrix shows as "src 0.0" at the first and worst index otherwise, which never says every value is 0)."""
    for stage in result.stages:
        if stage.status != "FAIL":
            continue
        notes = [n for n in (constant_side_note(stage.name, other_side, src.values.get(stage.name)),
                             constant_side_note(stage.name, "fv's", fv.values.get(stage.name))) if n]
        stage.detail[:0] = notes


def _clean(value: Any) -> Any:
    """``value`` with every NaN and infinity written as a string ("nan", "inf", "-inf"): the report stays JSON."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return _num(value) if isinstance(value, float) else value


def injection_rows(src_inj: dict, fv_inj: dict) -> list[dict]:
    """One row per trial key ``"<trial_id>:<trial_idx>"`` and prompt set comparing src and fv injection.

    Each row holds both sides' base, with-FV and delta log-probs of the target; where both sides have the
    trial, whether target ids, log-probs and logits agree and the max abs top-logit difference (inf when the top
    ids differ); otherwise ``missing_on`` names the side that lacks it.
    """
    rows = []
    for key in list(src_inj) + [k for k in fv_inj if k not in src_inj]:
        tid, tidx = key.rsplit(":", 1)
        for ps in PROMPT_SETS:
            s = src_inj.get(key, {}).get(ps)
            f = fv_inj.get(key, {}).get(ps)
            row = {"trial_id": tid, "trial_idx": int(tidx), "prompt_set": ps,
                   "target_id": (s or f or {}).get("target_id")}
            for side, v in (("src", s), ("fv", f)):
                row[f"{side}_base_logprob"] = v["base"]["logprob"] if v else None
                row[f"{side}_with_logprob"] = v["with"]["logprob"] if v else None
                row[f"{side}_delta_logprob"] = (v["with"]["logprob"] - v["base"]["logprob"]) if v else None
            if s and f:
                row["target_id_equal"] = s["target_id"] == f["target_id"]
                row["base_logprob_equal"] = s["base"]["logprob"] == f["base"]["logprob"]
                row["with_logprob_equal"] = s["with"]["logprob"] == f["with"]["logprob"]
                row["base_logits_identical"] = s["base"]["logits_sha256"] == f["base"]["logits_sha256"]
                row["with_logits_identical"] = s["with"]["logits_sha256"] == f["with"]["logits_sha256"]
                for part in ("base", "with"):
                    a, b = s[part]["top_logits"], f[part]["top_logits"]
                    same_ids = s[part]["top_ids"] == f[part]["top_ids"]
                    row[f"max_abs_logit_diff_{part}"] = max((abs(x - y) for x, y in zip(a, b)), default=0.0) if same_ids else math.inf
            else:
                row["missing_on"] = "fv" if s else "src"
            rows.append(row)
    return rows


def _csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _num(v) for k, v in r.items()})
    return buf.getvalue()


def write_parity_reports(out_dir: Path, result: ParityResult, src_inj: dict, fv_inj: dict) -> dict[str, Path]:
    """The four report files of one parity run, written together under ``out_dir``'s lock: a second writer of
    the same folder (another xdist worker, another session with the same ``--fv-out``) waits its turn, so the
    folder always holds one run's four files, never two runs' mixed."""
    out = Path(out_dir)
    report = {
        "status": result.status, "not_compared": result.not_compared_line, "earliest_failed_stage": result.earliest_failed_stage,
        "first_divergence": _clean(result.first_divergence()),
        # NONFINITE stages (a NaN or an infinity on either side), and PASSes that prove little (``degenerate``)
        "nonfinite_stages": result.nonfinite_stages,
        "degenerate_stages": result.degenerate_stages,
        "proves_little": result.proves_little,
        "stages": [{**s.as_row(), "max_abs_diff": _num(s.max_abs_diff), "max_rel_diff": _num(s.max_rel_diff),
                    "status_text": s.status_text, "degenerate": s.degenerate, "nonfinite": s.nonfinite,
                    "magnitude": _clean(s.magnitude),
                    "per_trial_mismatch_count": s.per_trial, "detail": s.detail, "pattern": s.pattern,
                    "worst": _clean(s.worst), "reference_function": s.reference_function,
                    "mismatches": [_clean(m.as_dict()) for m in s.mismatches[:50]]} for s in result.stages],
        "meta": result.meta,
    }
    rows = injection_rows(src_inj, fv_inj)
    inj = result.stage("injection")
    inj_report = {"status": inj.status, "mismatch_count": inj.mismatch_count, "max_abs_diff": _num(inj.max_abs_diff),
                  "nonfinite": inj.nonfinite,
                  "n_rows": len(rows), "all_logits_identical": all(r.get("base_logits_identical") and r.get("with_logits_identical") for r in rows),
                  "trials": rows, "meta": result.meta}
    with output_lock(out, command=f"{Path(sys.argv[0]).name} writing parity reports", wait_s=REPORT_LOCK_WAIT_S):
        return {
            "parity_suite_report.json": write_json(out / "parity_suite_report.json", report),
            "parity_suite_stages.csv": write_text(out / "parity_suite_stages.csv", _csv([s.as_row() for s in result.stages])),
            "injection_parity_trials.csv": write_text(out / "injection_parity_trials.csv", _csv(rows)),
            "injection_parity_report.json": write_json(out / "injection_parity_report.json", inj_report),
        }
