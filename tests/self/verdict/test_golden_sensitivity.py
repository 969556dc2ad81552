"""The goldens still catch the known mutants (docs/tolerances.md, "What the goldens catch").

Each family's tiny model is replayed against its goldens (no reference needed), then fv's values are mutated the
ways a bug would change them and compared again, through both paths that read goldens: the parity engine
(``compare_with``) and the syrupy extension the M1 golden tests use. Each mutant must FAIL there:

- one element of the mean activations moved: by 1e-2 on the fp32 families; on the fp16 families by the smallest
  change their tolerance is sure to catch, 1.5x the allowance (atol + rms_atol * rms), stated per family;
- the FV added at half strength (the injection stage recomputed with 0.5 * FV);
- two well-separated top heads swapped (rank 0 with the last rank); on the fp16 tiny models every indirect effect
  is below fp16's smallest normal number (6.1e-5), so no two heads are separated and the case says so.

A mutant test fails if its detection is removed (an infinite tolerance, the norm check off, top-head identities not
compared): each asserts the failing stage and the reason.
"""

from __future__ import annotations

import pytest
import torch

from fv.model.tiny import FAMILY_TINY
from fv.parity.compare import rms, tolerance_for
from fv.parity.run import compare_with, run_parity
from fv.pytest_plugin import load_session_model
from tests.support.families import family_params, family_trials
from tests.support.mutants import caught as _caught
from tests.support.mutants import injection_with_fv_scaled, ranked_heads
from tests.support.mutants import mutated as _mutated

pytestmark = pytest.mark.tiny

FP32_SHIFT = 1e-2  # the mutant: one element of the mean activations moved by 1e-2
FP16_MARGIN = 1.5  # an fp16 mutant's size in allowances: sure to be caught while the replay noise stays < allowance/2


@pytest.fixture(scope="module", params=FAMILY_TINY)
def replay(request, fv_options, tmp_path_factory, golden_replays):
    """fv's exact run of one family against its goldens (which must pass unmutated: the mutants start from it), on
    the family goldens' own set-up (tests/support/families.py); made once per session (``golden_replays``)."""
    name = request.param
    if fv_options.dtype not in ("auto", "") or fv_options.attn not in ("auto", ""):
        pytest.skip("the goldens hold the reference rule's dtype and attention; --fv-dtype/--fv-attn-implementation differ")

    def make():
        lm = load_session_model(fv_options, name)
        trials = family_trials(lm, tmp_path_factory.mktemp(f"sens-{name}"))
        return run_parity(lm, trials, family_params("exact"), None, None)

    run = golden_replays.get(name, make)
    assert run.result.status == "PASS", "\n".join(s.summary() for s in run.result.stages if s.status != "PASS")
    return run


def mean_shift(run) -> float:
    """The size of the mean-activation mutant: 1e-2 on fp32 families; 1.5 allowances on fp16/bf16 families."""
    if run.lm.dtype == torch.float32:
        return FP32_SHIFT
    tol = tolerance_for(run.lm.dtype, exact=False).for_stage("mean_activations")
    return FP16_MARGIN * tol.bound(0.0, rms(run.src.values["mean_activations"]))


def test_one_mean_activation_moved_is_caught(replay):
    run = replay
    mean = run.fv.values["mean_activations"].clone()
    shift = mean_shift(run)
    tol = tolerance_for(run.lm.dtype, exact=False).for_stage("mean_activations")
    allowance = tol.bound(0.0, rms(run.src.values["mean_activations"]))
    if run.lm.dtype == torch.float32:
        assert allowance < FP32_SHIFT / 2, f"fp32 allowance {allowance:.3g} too wide for a 1e-2 mutant"
    idx = tuple(s // 2 for s in mean.shape)  # an element in the middle: a mid layer, head, slot and dimension
    mean[idx] += shift
    words = _caught(run, _mutated(run, mean_activations=mean), "mean_activations")
    assert "1 of" in words or "elements differ" in words, words
    print(f"{run.lm.name} ({run.lm.dtype}): one element moved by {shift:.3g} caught; allowance {allowance:.3g}")


def test_fv_at_half_strength_is_caught(replay, monkeypatch):
    """The injection recomputed with 0.5 * FV (mean activations and indirect effects kept), as a bug that adds the
    FV at half strength would compute it."""
    run = replay
    _caught(run, _mutated(run, injection=injection_with_fv_scaled(run, 0.5, monkeypatch)), "injection")


def test_two_separated_top_heads_swapped_is_caught(replay):
    run = replay
    heads, effects, allowance = ranked_heads(run)
    a, b = heads[0], heads[-1]
    separation = abs(float(effects[a[0], a[1]] - effects[b[0], b[1]]))
    if separation <= allowance:
        assert run.lm.dtype != torch.float32, f"fp32 heads {a[:2]} and {b[:2]} not separated ({separation:.3g} <= {allowance:.3g})"
        pytest.skip(f"{run.lm.name} ({run.lm.dtype}): its golden indirect effects (max {float(effects.abs().max()):.3g}) "
                    f"are below the fp16 allowance {allowance:.3g}: no two top heads are separated, any order is the noise's")
    heads[0], heads[-1] = heads[-1], heads[0]
    _caught(run, _mutated(run, top_heads=heads), "top_heads")


def test_fp16_mutant_is_the_stated_smallest_change(replay):
    """On fp16 families a change of 1e-2 is inside the cross-CPU noise; the smallest sure catch is stated per family
    (docs/tolerances.md) and must stay below the mean activations' own RMS (the check still sees a real change)."""
    run = replay
    if run.lm.dtype == torch.float32:
        pytest.skip("fp32: the 1e-2 mutant itself is tested")
    shift = mean_shift(run)
    assert shift < rms(run.src.values["mean_activations"]), shift
    mean = run.fv.values["mean_activations"].clone()
    mean[tuple(s // 2 for s in mean.shape)] += shift / FP16_MARGIN / 2  # half the allowance: inside the tolerance
    result = compare_with(run, _mutated(run, mean_activations=mean))
    assert result.stage("mean_activations").status == "PASS", result.stage("mean_activations").summary()
