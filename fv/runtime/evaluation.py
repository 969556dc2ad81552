"""Evaluating an FV: inject it at the last token of the zero-shot and the shuffled-label prompt of each trial
and record, with and without it, the target's first-token logit, log-probability, probability and the top-1
prediction. The clean run does not depend on the edit layer, so it is computed once per prompt.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from fv.model.tree import ModelInfo
from fv.runtime.hooks import add_to_output
from fv.runtime.injection import TargetScore
from fv.runtime.prepared import PROMPT_SETS, PreparedPrompt, PreparedTrial


@dataclass
class _Scored:
    trial: PreparedTrial
    prompt_set: str
    prompt: PreparedPrompt
    base: TargetScore


def _row(tokenizer: Any, p: _Scored, with_: TargetScore) -> dict:
    b, tid, tr = p.base, p.prompt.target_id, p.trial.trial
    return {
        "trial_id": tr.trial_id, "trial_idx": tr.trial_idx, "prompt_set": p.prompt_set, "prompt": p.prompt.text,
        "answer": tr.target_str, "target_id": tid, "target_token": tokenizer.decode([tid]),
        "pred_id_base": b.pred_id, "pred_id_with": with_.pred_id,
        "accuracy_base": int(b.pred_id == tid), "accuracy_with": int(with_.pred_id == tid),
        "logit_base": b.logit, "logit_with": with_.logit, "logprob_base": b.logprob, "logprob_with": with_.logprob,
        "p_base": b.prob, "p_with": with_.prob, "delta_logit": with_.logit - b.logit,
        "delta_logprob": with_.logprob - b.logprob, "delta_p": with_.prob - b.prob,
    }


def evaluate_layers(model: Any, tokenizer: Any, info: ModelInfo, trials: Sequence[PreparedTrial], vector: torch.Tensor,
                    layers: Sequence[int], progress: Callable[[int], None] | None = None) -> dict[int, list[dict]]:
    """Per edit layer, one row per (trial, prompt set)."""
    scored = []
    for pt in trials:
        for name in PROMPT_SETS:
            p = pt.prompt_set(name)
            scored.append(_Scored(pt, name, p, TargetScore.of(model(**p.inputs).logits[:, -1, :], p.target_id)))
    out: dict[int, list[dict]] = {}
    for layer in layers:
        info.check_edit_layer(layer)
        rows = []
        for s in scored:
            with add_to_output(info.layers[layer], vector.reshape(1, info.d_model), -1):
                with_ = TargetScore.of(model(**s.prompt.inputs).logits[:, -1, :], s.prompt.target_id)
            rows.append(_row(tokenizer, s, with_))
        out[layer] = rows
        if progress:
            progress(1)
    return out


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return (statistics.fmean(xs), statistics.pstdev(xs)) if xs else (float("nan"), float("nan"))


def summarize(rows: list[dict]) -> dict:
    """The eval summary (docs/artifacts.md), over all rows and per prompt set."""

    def block(rs: list[dict]) -> dict:
        s: dict = {"n": len(rs)}
        for name, col in (("acc_base", "accuracy_base"), ("acc_with", "accuracy_with"), ("mean_logit_base", "logit_base"),
                          ("mean_logit_with", "logit_with"), ("mean_delta_logit", "delta_logit"),
                          ("mean_logprob_base", "logprob_base"), ("mean_logprob_with", "logprob_with"),
                          ("mean_delta_logprob", "delta_logprob"), ("mean_p_base", "p_base"), ("mean_p_with", "p_with"),
                          ("mean_delta_p", "delta_p")):
            m, sd = _mean_std([float(r[col]) for r in rs])
            s[name] = m
            s[("std_" + name.removeprefix("mean_")) if name.startswith("mean_") else f"std_{name}"] = sd
        s["delta_acc"] = s["acc_with"] - s["acc_base"]
        return s

    out = block(rows)
    out["by_prompt_set"] = {ps: block([r for r in rows if r["prompt_set"] == ps]) for ps in PROMPT_SETS}
    return out
