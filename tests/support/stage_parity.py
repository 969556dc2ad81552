"""One parity stage of a run asserted equal to the other side: no mismatch, and bit-exact under the exact tolerance;
the failure message names the model, what sets it apart, the other side, and every stage's verdict. And the stage's
result as the gate takes it: a stage the other side does not hold is skipped, never passed."""

from __future__ import annotations

from typing import Any

import pytest

from fv.parity.compare import SKIP


def assert_stage_matches(run: Any, stage: str, about: str) -> None:
    """``run``: a ``fv.parity.run.ParityRun``; ``about``: what the message says of the model beside its family
    (its projection, its tokenizer). An injection the reference left a no-op skips, naming ``--src-compat``."""
    result = run.result.stage(stage)
    if stage == "injection" and run.injection_error:
        pytest.skip(f"{run.injection_error} (run with --src-compat)")
    table = "\n".join(f"  {s.name}: {s.status}, {s.mismatch_count} mismatches, max_abs_diff {s.max_abs_diff}" for s in run.result.stages)
    where = (f"{run.lm.name} ({run.lm.info.model_type}, {about}; fv {run.lm.dtype}, "
             f"{run.lm.attn_implementation}; against {run.other_side}), stage {stage}:\n{table}")
    assert result.mismatch_count == 0, where
    if run.tolerance.name == "exact":
        assert result.max_abs_diff == 0.0, where


def compared_stage(run: Any, stage: str) -> Any:
    """The stage's result; a stage the goldens do not hold (a user's golden folder holds three) is skipped, not passed."""
    result = run.result.stage(stage)
    if result.status == SKIP:
        if result.lacked_by == "ours":  # a port that does not compute (or whose files do not hold) the stage
            meta = run.result.meta or {}
            ours = " ".join(str(meta[k]) for k in ("port", "port_folder") if meta.get(k)) or meta.get("our_side") or "the port"
            pytest.skip(f"not compared: our side ({ours}) holds no {stage}")
        pytest.skip(f"{run.other_side}: {result.detail[0]}")
    return result
