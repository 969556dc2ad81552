"""The parity stages in their order, and the values each side produces for them.

Both sides (the fv runtime and the reference adapter) return the same ``StageValues`` layout, so one
comparison engine and one golden format serve every pairing: fv vs the live reference, fv vs goldens,
reference vs goldens. Per-trial values are keyed ``"<trial_id>:<trial_idx>"``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from fv.activations import mean_head_activations
from fv.effects import indirect_effects
from fv.injection import TargetScore, intervene
from fv.models import LoadedModel
from fv.prompts import (answer_ids, dummy_labels, full_idx_map, prompt_string, slot_maps, token_meta_labels,
                        zero_shot_prompt_data)
from fv.trials import Trial
from fv.vectors import function_vector, top_heads

STAGES = ("prompt", "slot", "mean_activations", "indirect_effect", "top_heads", "fv", "injection")
PER_TRIAL_STAGES = ("prompt", "slot", "indirect_effect", "injection")
PROMPT_SETS = ("zero_shot", "shuffled")


def trial_key(tr: Trial) -> str:
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


def _slot_entry(token_labels: Sequence, idx_map: dict, idx_avg: dict, full: dict) -> dict:
    return {
        "token_labels": [[int(p), str(t), str(l)] for p, t, l in token_labels],
        "idx_map": {str(int(k)): int(v) for k, v in idx_map.items()},
        "idx_avg": {str(k): [int(v[0]), int(v[1])] for k, v in idx_avg.items()},
        "idx_map_full": {str(int(k)): int(v) for k, v in full.items()},
    }


def _prompt_entry(tokenizer: Any, clean: str, corrupted: str, target: str, ids: list[int]) -> dict:
    return {
        "clean_prompt_str": clean, "corrupted_prompt_str": corrupted,
        "clean_input_ids": list(tokenizer(clean).input_ids), "corrupted_input_ids": list(tokenizer(corrupted).input_ids),
        "target_str": target, "answer_ids": [int(i) for i in ids],
    }


def _score_pair(clean: torch.Tensor, edited: torch.Tensor, target_id: int) -> dict:
    return {"target_id": int(target_id), "base": TargetScore.of(clean, target_id).as_dict(),
            "with": TargetScore.of(edited, target_id).as_dict()}


class Timer:
    """Records the seconds a block took into ``out[name]`` (the stage durations of the reports)."""

    def __init__(self, out: dict, name: str):
        self.out, self.name = out, name

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        self.out[self.name] = time.perf_counter() - self.t0


def fv_prompt_values(lm: LoadedModel, trials: Sequence[Trial]) -> dict:
    """Per trial: both prompt strings, their token ids, and the target's answer ids, as fv renders them."""
    tok = lm.tokenizer
    out = {}
    for tr in trials:
        clean = prompt_string(tr.prompt_data_clean)
        out[trial_key(tr)] = _prompt_entry(tok, clean, prompt_string(tr.prompt_data_corrupted), tr.target_str,
                                           answer_ids(tok, clean, tr.target_str))
    return out


def fv_slot_values(lm: LoadedModel, trials: Sequence[Trial], prefixes: dict, separators: dict) -> tuple[list, dict]:
    """The dummy labels and, per trial and side, token labels and slot maps."""
    tok = lm.tokenizer
    dummy = dummy_labels(len(trials[0].prompt_data_clean["examples"]), tok, lm.prepend_bos, prefixes, separators)
    slots = {}
    for tr in trials:
        entry = {}
        for side, pd_ in (("clean", tr.prompt_data_clean), ("corrupted", tr.prompt_data_corrupted)):
            labels, _ = token_meta_labels(pd_, tok, prepend_bos=lm.prepend_bos)
            idx_map, idx_avg = slot_maps(labels, dummy)
            entry[side] = _slot_entry(labels, idx_map, idx_avg, full_idx_map(idx_map, idx_avg))
        slots[trial_key(tr)] = entry
    return dummy, {"dummy_labels": [[int(p), str(l)] for p, l in dummy], "trials": slots}


def fv_stage_values(lm: LoadedModel, trials: Sequence[Trial], params: Params, prefixes: dict, separators: dict,
                    progress: Callable[[str, int], None] | None = None) -> StageValues:
    """Every stage computed by the fv runtime alone."""
    tok, info = lm.tokenizer, lm.info
    info.check_edit_layer(params.edit_layer)
    sv = StageValues()
    d = sv.durations
    tick = (lambda s: (lambda n: progress(s, n))) if progress else (lambda s: (lambda n: None))
    with Timer(d, "prompt"):
        sv.values["prompt"] = fv_prompt_values(lm, trials)
    with Timer(d, "slot"):
        dummy, sv.values["slot"] = fv_slot_values(lm, trials, prefixes, separators)
    with Timer(d, "mean_activations"):
        mean = mean_head_activations(lm.model, tok, info, [tr.prompt_data_clean for tr in trials], dummy, lm.prepend_bos,
                                     mode=params.mode, progress=tick("mean_activations") if progress else None)
        sv.values["mean_activations"] = mean
    with Timer(d, "indirect_effect"):
        sv.values["indirect_effect"] = indirect_effects(lm.model, tok, info, [tr.prompt_data_corrupted for tr in trials], mean,
                                                        dummy, lm.prepend_bos, mode=params.mode, progress=tick("indirect_effect"))
    with Timer(d, "top_heads"):
        heads = top_heads(sv.values["indirect_effect"], params.n_top_heads)
        sv.values["top_heads"] = [[l, h, s] for l, h, s in heads]
    with Timer(d, "fv"):
        fvec = function_vector(mean, heads, info)
        sv.values["fv"] = fvec.vector.reshape(-1).to("cpu", torch.float32)
        sv.values["fv_by_layer"] = fvec.by_layer
    with Timer(d, "injection"):
        inj = {}
        for tr in trials:
            entry = {}
            for name, pd_ in (("zero_shot", zero_shot_prompt_data(tr.prompt_data_clean)), ("shuffled", tr.prompt_data_corrupted)):
                sentence = prompt_string(pd_)
                tid = answer_ids(tok, sentence, tr.target_str)[0]
                clean, edited = intervene(lm.model, tok, info, sentence, params.edit_layer, fvec.vector)
                entry[name] = _score_pair(clean, edited, tid)
            inj[trial_key(tr)] = entry
            tick("injection")(1)
        sv.values["injection"] = inj
    return sv


def src_stage_values(ref: Any, lm: LoadedModel, trials: Sequence[Trial], params: Params, prefixes: dict,
                     separators: dict) -> StageValues:
    """Every stage computed by the reference's own functions through the adapter."""
    tok = lm.tokenizer
    mc = ref.model_config(lm)
    sv = StageValues()
    d = sv.durations
    rebuilt = {}
    with Timer(d, "prompt"):
        create = ref.prompt_utils.create_prompt
        prompts = {}
        for tr in trials:
            clean = ref.prompt_data(tr.prompt_data_clean, lm.prepend_bos)
            corr = ref.prompt_data(tr.prompt_data_clean, lm.prepend_bos,
                                   shuffle_to=[e["output"] for e in tr.prompt_data_corrupted["examples"]])
            rebuilt[trial_key(tr)] = (clean, corr)
            cs, ks = create(clean), create(corr)
            prompts[trial_key(tr)] = _prompt_entry(tok, cs, ks, clean["query_target"]["output"],
                                                   ref.answer_ids(tok, cs, clean["query_target"]["output"]))
        sv.values["prompt"] = prompts
    with Timer(d, "slot"):
        dummy = ref.dummy_labels(tok, mc, len(trials[0].prompt_data_clean["examples"]), prefixes, separators)
        slots = {}
        for tr in trials:
            entry = {}
            for side, pd_ in zip(("clean", "corrupted"), rebuilt[trial_key(tr)]):
                s = ref.slots(pd_, tok, mc, dummy)
                entry[side] = _slot_entry(s["token_labels"], s["idx_map"], s["idx_avg"], s["idx_map_full"])
            slots[trial_key(tr)] = entry
        sv.values["slot"] = {"dummy_labels": [[int(p), str(l)] for p, l in dummy], "trials": slots}
    with Timer(d, "mean_activations"):
        mean = ref.mean_head_activations(lm, trials, prefixes, separators)
        sv.values["mean_activations"] = mean
    with Timer(d, "indirect_effect"):
        sv.values["indirect_effect"] = ref.indirect_effect(lm, trials, mean, prefixes, separators)
    with Timer(d, "top_heads"):
        fv, heads = ref.function_vector(lm, mean, sv.values["indirect_effect"], params.n_top_heads, params.token_class_idx)
        sv.values["top_heads"] = [[l, h, s] for l, h, s in heads]
    d["fv"] = 0.0
    sv.values["fv"] = fv.reshape(-1).to("cpu", torch.float32)
    with Timer(d, "injection"):
        zero_shot_builder = ref.prompt_utils.word_pairs_to_prompt_data
        inj = {}
        for tr in trials:
            clean_pd, corr_pd = rebuilt[trial_key(tr)]
            q = clean_pd["query_target"]
            zs = zero_shot_builder({"input": [], "output": []}, query_target_pair={k: v[1:] for k, v in q.items()},
                                   prepend_bos_token=not lm.prepend_bos, prefixes=clean_pd["prefixes"],
                                   separators=clean_pd["separators"])
            entry = {}
            for name, pd_ in (("zero_shot", zs), ("shuffled", corr_pd)):
                sentence = ref.prompt_utils.create_prompt(pd_)
                tid = ref.answer_ids(tok, sentence, q["output"])[0]
                clean, edited = ref.intervene(lm, sentence, q["output"], params.edit_layer, fv)
                entry[name] = _score_pair(clean, edited, tid)
            inj[trial_key(tr)] = entry
        sv.values["injection"] = inj
    return sv
