"""Fast mode equals exact mode within the tolerance of the dtype the model computes in (docs/parity.md), with the same top heads (a test, not a timing;
the speed is measured by benchmarks/bench_indirect_effect.py)."""

from __future__ import annotations

import warnings

import pytest
import torch

from fv.parity.compare import diff_tensors, tolerance_for
from fv.runtime.activations import mean_head_activations
from fv.runtime.effects import indirect_effects, pad_token_id
from fv.runtime.prepared import prepare_trials
from fv.runtime.slots import dummy_labels
from fv.runtime.top_heads import top_heads

pytestmark = pytest.mark.m2


_FAST: dict = {}


@pytest.fixture
def exact_and_fast(parity_run):
    key = (parity_run.lm.name, parity_run.trials.id)
    if key not in _FAST:
        _FAST[key] = _exact_and_fast(parity_run)
    return _FAST[key]


def _exact_and_fast(parity_run):
    lm, trials = parity_run.lm, parity_run.trials.subset(parity_run.params.max_trials)
    dummy = dummy_labels(len(trials[0].prompt_data_clean["examples"]), lm.tokenizer, lm.prepend_bos,
                         parity_run.trials.meta.get("prefixes"), parity_run.trials.meta.get("separators"))
    prepared = prepare_trials(lm.tokenizer, trials, dummy, lm.prepend_bos, lm.info.device)
    exact_mean = parity_run.fv.values["mean_activations"]
    exact_ie = parity_run.fv.values["indirect_effect"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a silent fallback to exact mode would make this test vacuous
        fast_mean = mean_head_activations(lm.model, lm.info, [p.clean for p in prepared], len(dummy), mode="fast")
        fast_ie = indirect_effects(lm.model, lm.info, [p.corrupted for p in prepared], exact_mean, pad_token_id(lm.tokenizer),
                                   mode="fast", trials_per_pass=3, chunk_rows=64)
    return exact_mean, fast_mean, exact_ie, fast_ie


def _tol(parity_run):
    """The compute dtype's tolerance (the model's weights' dtype), never the stored tensors' float32."""
    return tolerance_for(parity_run.lm.dtype, exact=False)


def test_mean_activations_fast_equals_exact(exact_and_fast, parity_run):
    exact, fast, _, _ = exact_and_fast
    tol = _tol(parity_run)
    d = diff_tensors(exact, fast, tol)
    assert d.n_mismatch == 0, "\n".join(d.lines(tol))


def test_indirect_effect_fast_equals_exact(exact_and_fast, parity_run):
    _, _, exact, fast = exact_and_fast
    tol = _tol(parity_run)
    d = diff_tensors(exact, fast, tol)
    assert d.n_mismatch == 0, "\n".join(d.lines(tol))
    # effects of a random tiny model can be small next to atol: in float32 also hold the error small next to their
    # scale (in float16/bfloat16 effects are differences of half-precision probabilities, whose step is that scale)
    if parity_run.lm.dtype == torch.float32:
        assert d.max_abs <= 1e-3 * float(exact.abs().max()), "\n".join(d.lines(tol))


def test_fast_top_heads_equal(exact_and_fast, parity_run):
    _, _, exact, fast = exact_and_fast
    n = parity_run.params.n_top_heads
    assert [h[:2] for h in top_heads(fast, n)] == [h[:2] for h in top_heads(exact, n)]


def test_fast_falls_back_with_a_warning(parity_run, monkeypatch):
    import fv.runtime.effects_fast as effects_fast

    def no_cache(*a, **k):
        raise effects_fast.FastUnavailable("no cache in this test")

    monkeypatch.setattr(effects_fast, "prefix_cache", no_cache)
    lm, trials = parity_run.lm, parity_run.trials.subset(1)
    dummy = dummy_labels(len(trials[0].prompt_data_clean["examples"]), lm.tokenizer, lm.prepend_bos,
                         parity_run.trials.meta.get("prefixes"), parity_run.trials.meta.get("separators"))
    prepared = prepare_trials(lm.tokenizer, trials, dummy, lm.prepend_bos, lm.info.device)
    with pytest.warns(RuntimeWarning, match="using exact mode"):
        out = indirect_effects(lm.model, lm.info, [prepared[0].corrupted], parity_run.fv.values["mean_activations"],
                               pad_token_id(lm.tokenizer), mode="fast")
    assert torch.equal(out[0], parity_run.fv.values["indirect_effect"][0])


def test_rows_passes_stay_within_chunk_rows(parity_run):
    """The first rows pass holds each trial's baseline row beside its (layer, head) rows: every rows pass stays
    within ``chunk_rows`` (the rows sizing's, and so the logits budget's, bound), and the effects do not depend on
    how the layers are split into passes."""
    from fv.runtime.effects_fast import effects_fast

    lm, n = parity_run.lm, 3
    trials = parity_run.trials.subset(n)
    dummy = dummy_labels(len(trials[0].prompt_data_clean["examples"]), lm.tokenizer, lm.prepend_bos,
                         parity_run.trials.meta.get("prefixes"), parity_run.trials.meta.get("separators"))
    corrupted = [p.corrupted for p in prepare_trials(lm.tokenizer, trials, dummy, lm.prepend_bos, lm.info.device)]
    mean, heads = parity_run.fv.values["mean_activations"], lm.info.n_heads
    chunk = n * 2 * heads + 1  # two layers' rows fit, two layers' rows and the baselines do not
    seen: list[int] = []

    def count(_m, args, kwargs):
        if kwargs.get("position_ids") is not None:  # the rows passes hand positions, the prefix pass does not
            seen.append(int(kwargs["input_ids"].numel()))

    handle = lm.model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        small = effects_fast(lm.model, lm.info, corrupted, mean, chunk_rows=chunk, pad_id=pad_token_id(lm.tokenizer))
    finally:
        handle.remove()
    whole = effects_fast(lm.model, lm.info, corrupted, mean, chunk_rows=1 << 20, pad_id=pad_token_id(lm.tokenizer))
    assert seen and max(seen) <= chunk, f"rows per pass {seen}, at most {chunk} allowed"
    assert len(seen) == lm.info.n_layers, "one layer a pass: the first pass's baselines leave no room for a second"
    tol = _tol(parity_run)
    d = diff_tensors(whole, small, tol)
    assert d.n_mismatch == 0, "\n".join(d.lines(tol))
