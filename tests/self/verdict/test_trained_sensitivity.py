"""What the goldens catch on the trained tiny model (``tiny-llama-fv``), where the quantities are real: the smallest
change each stage's check detects under the tolerance goldens are replayed with (and fast mode is held to: the same
named tolerance, ``fv.parity.tolerance.FP32``), measured on its own goldens; exact mode, against the live reference,
detects any change.

fv's exact run on the gates' first default trials (``lowercase_first_letter``, the first 5 of 10 trials, edit layer 2,
10 top heads) is replayed against its goldens (no reference needed), then mutated:

- one element of the mean activations, the indirect effects or the FV moved by 1.5 allowances (``atol + rms_atol *
  rms``, the allowance of one element) is caught, by 0.5 allowances it is not (the check's resolution, printed);
- the FV added at 0.9 strength is caught at the injection stage; the smallest strength change caught (of 10%, 1%,
  0.1%, 0.01%) is printed;
- the two top heads whose scores are closest while still apart by more than the allowance are swapped, and caught.

docs/tolerances.md, "On the trained tiny model", has the numbers these tests print.
"""

from __future__ import annotations

import pytest
import torch

from fv.model.default_inputs import default_inputs
from fv.parity.compare import rms, tolerance_for
from fv.parity.run import compare_with, run_parity
from fv.parity.stages import Params
from fv.pytest_plugin import load_session_model, trials_for
from tests.support.mutants import caught, injection_with_fv_scaled, mutated, ranked_heads

pytestmark = pytest.mark.tiny

MODEL, TRIALS_SET = "tiny-llama-fv", "lowercase_first_letter"
MARGIN = 1.5  # a mutant's size in allowances: sure to be caught; half an allowance: sure to pass


@pytest.fixture(scope="module")
def replay(fv_options, golden_replays):
    """fv's exact run on the trained model against its goldens; made once per session (``golden_replays``)."""
    if fv_options.dtype not in ("auto", "") or fv_options.attn not in ("auto", ""):
        pytest.skip("the goldens hold the reference rule's dtype and attention; --fv-dtype/--fv-attn-implementation differ")

    def make():
        lm = load_session_model(fv_options, MODEL)
        inputs = default_inputs(lm.path)
        trials = trials_for(fv_options, lm, inputs.trial_sets[TRIALS_SET])
        return run_parity(lm, trials, Params(n_top_heads=10, edit_layer=inputs.edit_layer, max_trials=5), None, None)

    run = golden_replays.get(MODEL, make)
    assert run.source == "golden", f"the replay must read the goldens, it read {run.source}"
    assert run.result.status == "PASS", "\n".join(s.summary() for s in run.result.stages if s.status != "PASS")
    return run


def _allowance(run, stage: str) -> float:
    return tolerance_for(run.lm.dtype, exact=False).for_stage(stage).bound(0.0, rms(run.src.values[stage]))


@pytest.mark.parametrize("stage", ["mean_activations", "indirect_effect", "fv"])
def test_one_element_moved_by_one_and_a_half_allowances_is_caught_by_half_it_is_not(replay, stage):
    run = replay
    allowance = _allowance(run, stage)
    golden = run.src.values[stage]
    assert 0 < allowance < 0.01 * float(golden.abs().max()), (stage, allowance)  # far below the stage's own values
    idx = tuple(int(i) for i in torch.nonzero(golden.abs() == golden.abs().max())[0])  # the largest element
    for size, expect in ((MARGIN * allowance, "FAIL"), (0.5 * allowance, "PASS")):
        values = run.fv.values[stage].clone()
        values[idx] += size
        if expect == "FAIL":
            words = caught(run, mutated(run, **{stage: values}), stage)
            assert "1 of" in words or "elements differ" in words, words
        else:
            got = compare_with(run, mutated(run, **{stage: values})).stage(stage)
            assert got.status == "PASS", got.summary()
    print(f"{MODEL} {stage}: one element moved by {MARGIN * allowance:.3g} caught, by {0.5 * allowance:.3g} not "
          f"(allowance {allowance:.3g} = 2e-3 x rms {rms(golden):.3g}; largest |value| {float(golden.abs().max()):.3g})")


def test_fv_at_nine_tenths_strength_is_caught_and_the_smallest_caught_is_stated(replay, monkeypatch):
    run = replay
    caught(run, mutated(run, injection=injection_with_fv_scaled(run, 0.9, monkeypatch)), "injection")
    smallest = None
    for change in (1e-2, 1e-3, 1e-4):
        result = compare_with(run, mutated(run, injection=injection_with_fv_scaled(run, 1 - change, monkeypatch)))
        if result.stage("injection").status != "FAIL":
            break
        smallest = change
    assert smallest is not None and smallest <= 1e-2, "an FV 1% weaker must be caught on this model"
    print(f"{MODEL} injection: an FV {smallest:.2%} weaker is caught" + (
        f", {smallest / 10:.2%} is not" if smallest > 1e-4 else ""))


def test_the_two_closest_separated_top_heads_swapped_is_caught(replay):
    run = replay
    heads, effects, allowance = ranked_heads(run)
    gaps = [(abs(float(effects[a[0], a[1]] - effects[b[0], b[1]])), i) for i, (a, b) in enumerate(zip(heads, heads[1:]))]
    separated = sorted(g for g in gaps if g[0] > allowance)
    assert separated, f"no two adjacent top heads are apart by more than the allowance {allowance:.3g}: {gaps}"
    gap, i = separated[0]
    heads[i], heads[i + 1] = heads[i + 1], heads[i]
    caught(run, mutated(run, top_heads=heads), "top_heads")
    print(f"{MODEL} top_heads: ranks {i + 1} and {i + 2} (scores {gap:.3g} apart; allowance {allowance:.3g}) swapped, "
          f"caught; {sum(g <= allowance for g, _ in gaps)} of {len(gaps)} adjacent pairs are closer than the allowance")
