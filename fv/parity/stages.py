"""The parity stages in their order, the values each side produces for them, and fv's side.

Both sides (the fv runtime here, the reference through ``fv.reference``) return the same ``StageValues``
layout, so one comparison engine and one golden format serve every pairing: fv vs the live reference, fv vs
goldens, reference vs goldens. Per-trial values are keyed ``"<trial_id>:<trial_idx>"``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from fv.model.loading import LoadedModel
from fv.parity.registry import PER_TRIAL_STAGES, STAGES  # noqa: F401  (declared once, in fv.parity.registry)
from fv.runtime.activations import mean_head_activations
from fv.runtime.effects import indirect_effects, pad_token_id
from fv.runtime.injection import TargetScore, intervene
from fv.runtime.prepared import PROMPT_SETS, PreparedTrial, prepare_trials
from fv.runtime.prompts import has_bos_text
from fv.runtime.slots import dummy_labels
from fv.runtime.top_heads import top_heads
from fv.runtime.trials import Trial
from fv.runtime.vectors import function_vector


def trial_key(tr: Trial) -> str:
    """A trial's key, ``"<trial_id>:<trial_idx>"``."""
    return f"{tr.trial_id}:{tr.trial_idx}"


@dataclass
class Params:
    n_top_heads: int = 10
    edit_layer: int = 9
    max_trials: int | None = 5
    token_class_idx: int = -1
    mode: str = "exact"

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class StageValues:
    """Every stage's outputs for one side. Tensors stay tensors; the rest is JSON-ready."""

    values: dict[str, Any] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)

    def __getitem__(self, stage: str) -> Any:
        return self.values[stage]


def slot_entry(token_labels: Sequence, idx_map: dict, idx_avg: dict, full: dict) -> dict:
    """One prompt's slot-stage value: token labels, idx_map, idx_avg and the full idx map."""
    return {
        "token_labels": [[int(p), str(t), str(l)] for p, t, l in token_labels],
        "idx_map": {str(int(k)): int(v) for k, v in idx_map.items()},
        "idx_avg": {str(k): [int(v[0]), int(v[1])] for k, v in idx_avg.items()},
        "idx_map_full": {str(int(k)): int(v) for k, v in full.items()},
    }


def prompt_entry(clean: str, corrupted: str, clean_ids: Sequence[int], corrupted_ids: Sequence[int], target: str,
                 answer: Sequence[int]) -> dict:
    """One trial's prompt-stage value: both prompt strings, their token ids, the target and its answer ids."""
    return {
        "clean_prompt_str": clean, "corrupted_prompt_str": corrupted,
        "clean_input_ids": [int(i) for i in clean_ids], "corrupted_input_ids": [int(i) for i in corrupted_ids],
        "target_str": target, "answer_ids": [int(i) for i in answer],
    }


def score_pair(clean: torch.Tensor, edited: torch.Tensor, target_id: int) -> dict:
    """One prompt's injection-stage value: the target's scores without and with the FV."""
    return {"target_id": int(target_id), "base": TargetScore.of(clean, target_id).as_dict(),
            "with": TargetScore.of(edited, target_id).as_dict()}


class Timer:
    """Records the seconds a block took into ``out[name]`` (the stage durations of the reports)."""

    def __init__(self, out: dict, name: str):
        self.out, self.name = out, name

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        self.out[self.name] = self.out.get(self.name, 0.0) + time.perf_counter() - self.t0


def fv_prompt_values(prepared: Sequence[PreparedTrial]) -> dict:
    """Per trial: both prompt strings, their token ids, and the target's answer ids, as fv renders them."""
    return {pt.key: prompt_entry(pt.clean.text, pt.corrupted.text, pt.clean.input_ids, pt.corrupted.input_ids,
                                 pt.trial.target_str, pt.clean.answer_ids) for pt in prepared}


def fv_slot_values(prepared: Sequence[PreparedTrial], dummy: Sequence[tuple[int, str]]) -> dict:
    """The dummy labels and, per trial and side, token labels and slot maps."""
    slots = {}
    for pt in prepared:
        slots[pt.key] = {side: slot_entry(p.token_labels, p.idx_map, p.idx_avg, p.idx_map_full)
                         for side, p in (("clean", pt.clean), ("corrupted", pt.corrupted))}
    return {"dummy_labels": [[int(p), str(l)] for p, l in dummy], "trials": slots}


def fv_dummy_labels(lm: LoadedModel, trials: Sequence[Trial], prefixes: dict | None, separators: dict | None) -> list:
    """The slot layout of these trials' shot count on this model's tokenizer."""
    return dummy_labels(len(trials[0].prompt_data_clean["examples"]), lm.tokenizer, lm.prepend_bos, prefixes, separators,
                        bos_text=has_bos_text(trials[0].prompt_data_clean))


def fv_stage_values(lm: LoadedModel, trials: Sequence[Trial], params: Params, prefixes: dict | None, separators: dict | None,
                    progress: Callable[[str, int], None] | None = None) -> StageValues:
    """Every stage computed by the fv runtime alone; each prompt is tokenized and labelled once."""
    tok, info = lm.tokenizer, lm.info
    info.check_edit_layer(params.edit_layer)
    sv = StageValues()
    d = sv.durations
    tick = (lambda s: (lambda n: progress(s, n))) if progress else (lambda s: None)
    with Timer(d, "prompt"):
        dummy = fv_dummy_labels(lm, trials, prefixes, separators)
        prepared = prepare_trials(tok, trials, dummy, lm.prepend_bos, info.device)
        sv.values["prompt"] = fv_prompt_values(prepared)
    with Timer(d, "slot"):
        sv.values["slot"] = fv_slot_values(prepared, dummy)
    with Timer(d, "mean_activations"):
        mean = mean_head_activations(lm.model, info, [pt.clean for pt in prepared], len(dummy), mode=params.mode,
                                     progress=tick("mean_activations"))
        sv.values["mean_activations"] = mean
    with Timer(d, "indirect_effect"):
        sv.values["indirect_effect"] = indirect_effects(lm.model, info, [pt.corrupted for pt in prepared], mean,
                                                        pad_token_id(tok), mode=params.mode, progress=tick("indirect_effect"))
    with Timer(d, "top_heads"):
        heads = top_heads(sv.values["indirect_effect"], params.n_top_heads)
        sv.values["top_heads"] = [[l, h, s] for l, h, s in heads]
    with Timer(d, "fv"):
        fvec = function_vector(mean, heads, info)
        sv.values["fv"] = fvec.vector.reshape(-1).to("cpu", torch.float32)
        sv.values["fv_by_layer"] = fvec.by_layer
    with Timer(d, "injection"):
        inj = {}
        for pt in prepared:
            entry = {}
            for name in PROMPT_SETS:
                p = pt.prompt_set(name)
                clean, edited = intervene(lm.model, info, p.inputs, params.edit_layer, fvec.vector)
                entry[name] = score_pair(clean, edited, p.target_id)
            inj[pt.key] = entry
            if progress:
                progress("injection", 1)
        sv.values["injection"] = inj
    return sv
