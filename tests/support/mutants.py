"""The goldens' mutants, shared by the sensitivity tests (tests/self/verdict/test_golden_sensitivity.py on the random
families, test_trained_sensitivity.py on the trained tiny model): fv's values changed the ways a bug would change
them, compared with the goldens through both paths that read goldens, the parity engine (``compare_with``) and the
syrupy extension the M1 golden tests use."""

from __future__ import annotations

import copy

import torch

from fv.parity.compare import rms, tolerance_for
from fv.parity.golden import GOLDEN_ARTIFACTS, golden_dir, to_jsonable
from fv.parity.golden_check import golden_file
from fv.parity.run import compare_with
from fv.parity.snapshot import golden_extension
from fv.parity.stages import fv_stage_values
from fv.paths import SNAPSHOT_ROOT


def mutated(run, **changes):
    """fv's values of ``run`` with ``changes`` ({stage: value}) in place of its own."""
    values = copy.copy(run.fv)
    values.values = {**run.fv.values, **changes}
    return values


def caught(run, values, stage: str) -> str:
    """Compare mutated values with the goldens both ways; assert ``stage`` fails in both; return the engine's words."""
    result = compare_with(run, values)
    failed = [s.name for s in result.stages if s.status == "FAIL"]
    assert stage in failed, f"{stage} mutant not caught by the goldens; stages that failed: {failed}"
    assert not golden_matches(run, values, stage), f"{stage} mutant passes the syrupy golden check"
    return result.stage(stage).summary()


def golden_matches(run, values, stage: str) -> bool:
    """Whether the syrupy extension of the M1 golden tests takes ``values``' ``stage`` as matching its golden file."""
    folder = golden_dir(SNAPSHOT_ROOT, run.lm.name, run.trials.id, len(run.trial_keys))
    kind = GOLDEN_ARTIFACTS[stage][0]
    ext = golden_extension(folder, kind, tolerance_for(run.lm.dtype, exact=False).for_stage(stage), stage)()
    old = golden_file(folder, stage).read_bytes()
    return ext.matches(serialized_data=ext.serialize(values.values[stage]),
                       snapshot_data=old if kind == "tensor" else old.decode("utf-8"))


def injection_with_fv_scaled(run, scale: float, monkeypatch) -> object:
    """The injection stage recomputed with ``scale`` * FV (mean activations and indirect effects kept), as a bug that
    adds the FV at another strength would compute it; JSON-ready, as the stage's values are."""
    import fv.parity.stages as st

    real = st.intervene
    with monkeypatch.context() as m:
        m.setattr(st, "mean_head_activations", lambda *a, **k: run.fv.values["mean_activations"])
        m.setattr(st, "indirect_effects", lambda *a, **k: run.fv.values["indirect_effect"])
        m.setattr(st, "intervene", lambda model, info, inputs, layer, vec, *a, **k: real(model, info, inputs, layer, scale * vec, *a, **k))
        subset = run.trials.subset(run.params.max_trials)
        values = fv_stage_values(run.lm, subset, run.params, run.trials.meta.get("prefixes"), run.trials.meta.get("separators"))
    assert torch.equal(values.values["fv"], run.fv.values["fv"])  # only the addition is mutated
    return to_jsonable(values.values["injection"])


def ranked_heads(run) -> tuple[list, torch.Tensor, float]:
    """(fv's top heads, copied: ``[layer, head, score]`` rows; the goldens' trial-mean indirect effects, (layers, heads)
    float64; the allowance within which two heads' effects cannot be told apart, so that they may trade ranks, as
    ``fv.parity.comparers.heads_swap_ok`` allows)."""
    heads = [list(h) for h in run.fv.values["top_heads"]]
    effects = run.src.values["indirect_effect"].to(torch.float64).mean(0)
    tol = tolerance_for(run.lm.dtype, exact=False).for_stage("top_heads")
    return heads, effects, tol.atol + tol.rms_atol * rms(effects)
