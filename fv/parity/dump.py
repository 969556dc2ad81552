"""The per-trial dump both sides write (M3 for the reference, and beside M4's artifacts for fv), keyed by
``(trial_id, trial_idx)``: prompt strings, token ids, slot maps, target id, and injection log-probs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fv.io import read_json, write_json
from fv.parity.golden import to_jsonable
from fv.parity.stages import StageValues, fv_prompt_values, fv_slot_values
from fv.pipelines.run import RunResult


def _inj(entry: dict) -> dict:
    return {ps: {"target_id": v["target_id"], "base_logprob": v["base"]["logprob"], "with_logprob": v["with"]["logprob"],
                 "base_logit": v["base"]["logit"], "with_logit": v["with"]["logit"], "pred_id_base": v["base"]["pred_id"],
                 "pred_id_with": v["with"]["pred_id"]} for ps, v in entry.items()}


def build_dump(sv: StageValues, meta: dict, edit_layer: int) -> dict:
    """The dump of one side's stage values."""
    trials = []
    for key, p in sv.values["prompt"].items():
        tid, tidx = key.rsplit(":", 1)
        trials.append({
            "trial_id": _id(tid), "trial_idx": int(tidx), "clean_prompt_str": p["clean_prompt_str"],
            "corrupted_prompt_str": p["corrupted_prompt_str"], "clean_input_ids": p["clean_input_ids"],
            "corrupted_input_ids": p["corrupted_input_ids"], "target_id": p["answer_ids"][0], "answer_ids": p["answer_ids"],
            "slots": sv.values["slot"]["trials"][key], "injection": _inj(sv.values["injection"].get(key, {})),
        })
    return {"meta": {**meta, "edit_layer": edit_layer}, "dummy_labels": sv.values["slot"]["dummy_labels"],
            "top_heads": sv.values["top_heads"], "trials": trials}


def _id(s: str) -> Any:
    return int(s) if s.lstrip("-").isdigit() else s


def write_runtime_dump(out: Path, result: RunResult, edit_layer: int) -> Path:
    """``fv_runtime_dump.json`` beside a run's artifacts, in the reference dump's layout, so ``fv parity diff`` can
    compare the two folders trial by trial."""
    sv = StageValues()
    sv.values["prompt"] = to_jsonable(fv_prompt_values(result.prepared))
    sv.values["slot"] = to_jsonable(fv_slot_values(result.prepared, result.dummy))
    sv.values["top_heads"] = read_json(out / "top_heads.json")
    inj: dict = {}
    for r in result.rows:
        side = lambda s: {"logprob": r[f"logprob_{s}"], "logit": r[f"logit_{s}"], "pred_id": r[f"pred_id_{s}"]}  # noqa: E731
        inj.setdefault(f"{r['trial_id']}:{r['trial_idx']}", {})[r["prompt_set"]] = {"target_id": r["target_id"], "base": side("base"), "with": side("with")}
    sv.values["injection"] = inj
    return write_json(out / "fv_runtime_dump.json", build_dump(sv, result.meta, edit_layer))
