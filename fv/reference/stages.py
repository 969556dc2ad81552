"""The reference's side of every parity stage, computed by its own functions through the adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from fv.model.loading import LoadedModel
from fv.parity.run import LiveSource
from fv.parity.stages import Params, StageValues, Timer, prompt_entry, score_pair, slot_entry, trial_key
from fv.reference.adapter import InjectionNoOp, Reference
from fv.errors import FVError
from fv.runtime.trials import FixedTrials, Trial


# the reference function behind each parity stage, named in reports when a stage fails
STAGE_FUNCTIONS = {
    "prompt": "utils/prompt_utils.py: word_pairs_to_prompt_data, create_prompt; utils/eval_utils.py: get_answer_id",
    "slot": "utils/prompt_utils.py: get_token_meta_labels, get_dummy_token_labels, compute_duplicated_labels, update_idx_map",
    "mean_activations": "utils/extract_utils.py: get_mean_head_activations (gather_attn_activations, multi-token averaging)",
    "indirect_effect": "compute_indirect_effect.py: compute_indirect_effect, activation_replacement_per_class_intervention",
    "top_heads": "utils/extract_utils.py: compute_function_vector (top-k of the trial-mean indirect effect)",
    "fv": "utils/extract_utils.py: compute_function_vector (sum of top heads' output projections)",
    "injection": "utils/intervention_utils.py: function_vector_intervention, add_function_vector",
}


def src_stage_values(ref: Reference, lm: LoadedModel, trials: Sequence[Trial], params: Params, prefixes: dict,
                     separators: dict) -> StageValues:
    """Every stage computed by the reference's own functions."""
    tok = lm.tokenizer
    mc = ref.model_config(lm)
    sv = StageValues()
    d = sv.durations
    rebuilt = {}
    bos, _rule = ref.bos_text_rule(lm)
    with Timer(d, "prompt"):
        create = ref.prompt_utils.create_prompt
        prompts = {}
        for tr in trials:
            clean = ref.prompt_data(tr.prompt_data_clean, bos)
            corr = ref.prompt_data(tr.prompt_data_clean, bos,
                                   shuffle_to=[e["output"] for e in tr.prompt_data_corrupted["examples"]])
            rebuilt[trial_key(tr)] = (clean, corr)
            cs, ks = create(clean), create(corr)
            target = clean["query_target"]["output"]
            prompts[trial_key(tr)] = prompt_entry(cs, ks, tok(cs).input_ids, tok(ks).input_ids, target,
                                                  ref.answer_ids(tok, cs, target))
        sv.values["prompt"] = prompts
    with Timer(d, "slot"):
        dummy = ref.dummy_labels(tok, mc, len(trials[0].prompt_data_clean["examples"]), prefixes, separators)
        slots = {}
        for tr in trials:
            entry = {}
            for side, pd_ in zip(("clean", "corrupted"), rebuilt[trial_key(tr)]):
                s = ref.slots(pd_, tok, mc, dummy)
                entry[side] = slot_entry(s["token_labels"], s["idx_map"], s["idx_avg"], s["idx_map_full"])
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
        inj = {}
        for tr in trials:
            clean_pd, corr_pd = rebuilt[trial_key(tr)]
            q = clean_pd["query_target"]
            entry = {}
            for name, pd_ in (("zero_shot", ref.zero_shot_prompt_data(clean_pd, bos)), ("shuffled", corr_pd)):
                sentence = ref.prompt_utils.create_prompt(pd_)
                tid = ref.answer_ids(tok, sentence, q["output"])[0]
                clean, edited = ref.intervene(lm, sentence, q["output"], params.edit_layer, fv)
                entry[name] = score_pair(clean, edited, tid)
            inj[trial_key(tr)] = entry
        sv.values["injection"] = inj
    return sv


def reference_stage_values(ref: Reference, lm: LoadedModel, trials: Sequence[Trial], params: Params, prefixes: dict,
                           separators: dict) -> tuple[StageValues, str | None]:
    """The reference's stage values, and why its injection cannot be trusted here (None when it can)."""
    error = None
    try:
        ref.require_live_injection(lm, params.edit_layer)
    except InjectionNoOp as exc:
        error = str(exc)
    return src_stage_values(ref, lm, trials, params, prefixes, separators), error


def reference_key_parts(src_root: Path, baukit: Path | None, compat: bool, lm: LoadedModel, memo_dir: Path | None) -> dict:
    """What the reference's values depend on besides trials and parameters: every file of its src/, the baukit
    it runs with, --src-compat, and the model object it computes on (for the src-values cache)."""
    from fv.parity.src_cache import model_key, tree_digest

    return {"src_tree_sha256": tree_digest(src_root), "baukit_sha256": tree_digest(baukit) if baukit else None,
            "compat": compat, "model": model_key(lm, memo_dir)}


def _baukit_in_use() -> Path | None:
    """The folder (or lone nethook.py) of the baukit the adapter installed."""
    import sys

    mod = sys.modules.get("baukit.nethook") or sys.modules.get("baukit")
    f = getattr(mod, "__file__", None)
    if not f:
        return None
    pkg = sys.modules.get("baukit")
    return Path(f) if getattr(pkg, "__file__", None) is None else Path(pkg.__file__).parent


def require_same_loading(theirs: LoadedModel, mine: LoadedModel) -> None:
    """Both sides must hold the same weights in the same dtype and attention implementation, or the end-to-end
    gate compares two set-ups instead of two implementations."""
    a = (str(theirs.dtype).replace("torch.", ""), theirs.attn_implementation)
    b = (str(mine.dtype).replace("torch.", ""), mine.attn_implementation)
    if a != b:
        raise FVError(f"the two sides load {mine.name} differently: the reference's own loader gave {a[0]} with {a[1]} "
                      f"attention, fv {b[0]} with {b[1]} ({mine.loading_rule}). Drop --fv-dtype/--fv-attn-implementation "
                      "(fv then loads as the reference does), or pass --src-model shared to hand the reference fv's model.")


def live_source(ref: Reference, own: LoadedModel | None = None) -> LiveSource:
    """The reference as the parity engine's other side: on ``own``, the copy its own loader loaded (the
    end-to-end mode), or on fv's model object when ``own`` is None (the shared mode)."""

    def check(lm: LoadedModel, trials: FixedTrials) -> dict:
        theirs = own or lm
        if own is not None:
            require_same_loading(own, lm)
        _bos, rule = ref.require_trials_fit(theirs, trials)
        return {"src_model_mode": "own" if own is not None else "shared", "src_dtype": str(theirs.dtype).replace("torch.", ""),
                "src_attn_implementation": theirs.attn_implementation,
                "src_loading": "the reference's own loader (utils/model_utils.py)" if own is not None else "fv's model object",
                "src_bos_rule": rule}

    where = (f"its own loader's model: {str(own.dtype).replace('torch.', '')}, {own.attn_implementation} attention"
             if own is not None else "its functions on fv's model object")
    return LiveSource(
        compute=lambda lm, trials, params, prefixes, separators: reference_stage_values(ref, own or lm, trials, params, prefixes, separators),
        notes=list(ref.notes) + (["the reference loaded its own model with its own loader"] if own is not None else []),
        compat=ref.compat, description=f"the live reference {ref.src_root} ({where})", check=check,
        key_parts=lambda lm, memo: reference_key_parts(ref.src_root, _baukit_in_use(), ref.compat, own or lm, memo))
