"""The gate against the reference's own copy of a model in its own process (a fork's, or upstream's), asserted bit
for bit: what the tests of the reference as users run it share."""

from __future__ import annotations

from pathlib import Path

from fv.parity.stages import Params
from tests.support.families import family_trials

GATE_PARAMS = Params(n_top_heads=4, edit_layer=1, max_trials=2)


def gate(ref, lm, rm, out: Path):
    """fv (``lm``) against the reference's own copy ``rm`` in its process, on trials for this src's BOS rule."""
    from fv.parity.run import run_parity
    from fv.reference.stages import STAGE_FUNCTIONS, live_source

    trials = family_trials(lm, out, ref.bos_text_rule(rm)[0])
    return run_parity(lm, trials, GATE_PARAMS, live_source(ref, rm), out / "reports", stage_functions=STAGE_FUNCTIONS)


def assert_bit_exact(run) -> float:
    """Every compared stage of ``run`` without a mismatch and with max_abs_diff 0.0 (an injection the reference left
    a no-op is not compared); returns the largest max_abs_diff."""
    table = "; ".join(f"{s.name} {s.status} {s.mismatch_count} {s.max_abs_diff}" for s in run.result.stages)
    compared = [s for s in run.result.stages if not (s.name == "injection" and run.injection_error)]
    for s in compared:
        assert s.mismatch_count == 0 and s.max_abs_diff == 0.0, table
    return max(float(s.max_abs_diff) for s in compared)
