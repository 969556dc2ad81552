"""Fast-mode evaluation (shuffled prompts from the indirect effect's prefix cache, zero-shot prompts batched with
logits at their last positions) gives exact mode's scores within the fp32 tolerance, and really takes the cached
path (a self-test on the tiny model; no timing)."""

from __future__ import annotations

import warnings

import pytest
import torch

from fv.model.loading import load_model
from fv.model.tiny import ensure_tiny_model
from fv.parity.compare import FP32, rms
from fv.paths import FIXTURES
from fv.runtime.activations import mean_head_activations
from fv.runtime.effects import indirect_effects, pad_token_id
from fv.runtime.evaluation import BaselineStore, evaluate_layers
from fv.runtime.prepared import prepare_trials
from fv.runtime.slots import dummy_labels
from fv.runtime.top_heads import top_heads
from fv.runtime.trials import load_trials, make_icl_trials, save_trials
from fv.runtime.vectors import function_vector

SCORES = ("logit_base", "logit_with", "logprob_base", "logprob_with", "p_base", "p_with")


def _scales(rows: list[dict]) -> dict[str, float]:
    """Per score, the RMS of exact mode's values over the rows: the scale FP32's allowance is relative to."""
    return {k: rms(torch.tensor([float(r[k]) for r in rows], dtype=torch.float64)) for k in SCORES}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    lm = load_model(str(ensure_tiny_model("tiny-llama")), "cpu", "float32")
    path = tmp_path_factory.mktemp("fasteval") / "trials.json"
    save_trials(path, make_icl_trials(FIXTURES / "antonym_tiny.json", lm.tokenizer, 3, 10, 0, model_prepend_bos=lm.prepend_bos))
    trials = load_trials(path).trials
    dummy = dummy_labels(10, lm.tokenizer, lm.prepend_bos)
    prepared = prepare_trials(lm.tokenizer, trials, dummy, lm.prepend_bos, lm.info.device)
    mean = mean_head_activations(lm.model, lm.info, [p.clean for p in prepared], len(dummy), mode="fast")
    store = BaselineStore()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a silent fallback to exact mode would leave the store empty
        ie = indirect_effects(lm.model, lm.info, [p.corrupted for p in prepared], mean, pad_token_id(lm.tokenizer),
                              mode="fast", trials_per_pass=2, keep=store)
    vector = function_vector(mean, top_heads(ie, 10), lm.info).vector
    yield lm, prepared, vector, store
    store.close()


def test_fast_evaluation_matches_exact(setup):
    lm, prepared, vector, store = setup
    layers = [2, lm.info.n_layers // 3]
    assert len(store.groups) == 2  # two passes of trials, each kept
    exact = evaluate_layers(lm.model, lm.tokenizer, lm.info, prepared, vector, layers, mode="exact")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the cached path must not fall back to full passes
        fast = evaluate_layers(lm.model, lm.tokenizer, lm.info, prepared, vector, layers, mode="fast", baseline=store,
                               pad_id=pad_token_id(lm.tokenizer), rows_per_pass=3)
    for layer in layers:
        scale = _scales(exact[layer])
        assert len(fast[layer]) == len(exact[layer]) == 2 * len(prepared)
        for e, f in zip(exact[layer], fast[layer]):
            assert (e["trial_id"], e["prompt_set"], e["pred_id_base"], e["pred_id_with"]) == \
                   (f["trial_id"], f["prompt_set"], f["pred_id_base"], f["pred_id_with"])
            bad = [k for k in SCORES if not FP32.close(f[k], e[k], scale[k])]
            assert not bad, f"layer {layer}, {e['prompt_set']} prompt of trial {e['trial_id']}: fast differs from exact in {bad}"
        # the FV moves the scores: a no-op injection on either path would pass the checks above vacuously
        assert any(abs(r["delta_logit"]) > 1e-3 for r in exact[layer])


def test_fast_evaluation_without_store_runs_shuffled_prompts_in_batches(setup):
    lm, prepared, vector, _ = setup
    layer = lm.info.n_layers // 3
    exact = evaluate_layers(lm.model, lm.tokenizer, lm.info, prepared, vector, [layer], mode="exact")[layer]
    fast = evaluate_layers(lm.model, lm.tokenizer, lm.info, prepared, vector, [layer], mode="fast",
                           pad_id=pad_token_id(lm.tokenizer))[layer]
    scale = _scales(exact)
    bad = [(e["trial_id"], e["prompt_set"], k) for e, f in zip(exact, fast) for k in SCORES if not FP32.close(f[k], e[k], scale[k])]
    assert not bad, f"fast differs from exact beyond {FP32.name} at (trial, prompt set, score): {bad}"
