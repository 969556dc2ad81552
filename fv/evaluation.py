"""Evaluating an FV: inject it at the last token of the zero-shot and the shuffled-label prompt of each trial
and record, with and without it, the target's first-token logit, log-probability, probability and the top-1
prediction. The clean run does not depend on the edit layer, so it is computed once per prompt.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from fv.hooks import add_to_output
from fv.injection import TargetScore
from fv.models import LoadedModel
from fv.prompts import answer_ids, prompt_string, zero_shot_prompt_data
from fv.trials import Trial

PROMPT_SETS = {"zero_shot": lambda tr: zero_shot_prompt_data(tr.prompt_data_clean), "shuffled": lambda tr: tr.prompt_data_corrupted}


@dataclass
class _Prompt:
    trial: Trial
    prompt_set: str
    text: str
    target_id: int
    inputs: Any
    base: TargetScore


def _prepare(lm: LoadedModel, trials: Sequence[Trial]) -> list[_Prompt]:
    out = []
    for tr in trials:
        for name, make in PROMPT_SETS.items():
            text = prompt_string(make(tr))
            tid = answer_ids(lm.tokenizer, text, tr.target_str)[0]
            inputs = lm.tokenizer(text, return_tensors="pt").to(lm.info.device)
            base = TargetScore.of(lm.model(**inputs).logits[:, -1, :], tid)
            out.append(_Prompt(tr, name, text, tid, inputs, base))
    return out


def _row(lm: LoadedModel, p: _Prompt, with_: TargetScore) -> dict:
    b = p.base
    return {
        "trial_id": p.trial.trial_id, "trial_idx": p.trial.trial_idx, "prompt_set": p.prompt_set, "prompt": p.text,
        "answer": p.trial.target_str, "target_id": p.target_id, "target_token": lm.tokenizer.decode([p.target_id]),
        "pred_id_base": b.pred_id, "pred_id_with": with_.pred_id,
        "accuracy_base": int(b.pred_id == p.target_id), "accuracy_with": int(with_.pred_id == p.target_id),
        "logit_base": b.logit, "logit_with": with_.logit, "logprob_base": b.logprob, "logprob_with": with_.logprob,
        "p_base": b.prob, "p_with": with_.prob, "delta_logit": with_.logit - b.logit,
        "delta_logprob": with_.logprob - b.logprob, "delta_p": with_.prob - b.prob,
    }


def evaluate_layers(lm: LoadedModel, trials: Sequence[Trial], vector: torch.Tensor, layers: Sequence[int],
                    progress: Callable[[int], None] | None = None) -> dict[int, list[dict]]:
    """Per edit layer, one row per (trial, prompt set)."""
    prompts = _prepare(lm, trials)
    out: dict[int, list[dict]] = {}
    for layer in layers:
        lm.info.check_edit_layer(layer)
        rows = []
        for p in prompts:
            with add_to_output(lm.info.layers[layer], vector.reshape(1, lm.info.d_model), -1):
                with_ = TargetScore.of(lm.model(**p.inputs).logits[:, -1, :], p.target_id)
            rows.append(_row(lm, p, with_))
        out[layer] = rows
        if progress:
            progress(1)
    return out


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return (statistics.fmean(xs), statistics.pstdev(xs)) if xs else (float("nan"), float("nan"))


def summarize(rows: list[dict]) -> dict:
    """The eval summary of SPEC 3, over all rows and per prompt set."""

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
