"""The gate's own sensitivity (fv checking itself): a perturbed fv must fail at exactly the perturbed stage.

Runs on the session's first model and trials through the same cached parity run as M2 (tests/parity/), so the
planted change is measured against the same other side.
"""

from __future__ import annotations

import pytest
import torch

import fv.parity.stages as stages
import fv.runtime.prepared as prepared
from fv.parity.run import compare_with
from fv.parity.stages import STAGES
from tests.support.stage_parity import compared_stage

pytestmark = pytest.mark.m2


# --- a perturbed fv must fail at exactly the perturbed stage -------------------------------------------------

def _bump(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] += 1e-2
    return t


def _perturb(monkeypatch, stage: str) -> None:
    if stage == "prompt":
        orig = prepared.prompt_string
        monkeypatch.setattr(prepared, "prompt_string", lambda pd, *a: orig(pd, *a) + " ")
        orig_labels = prepared.token_meta_labels

        def token_meta_labels(*a, **k):
            labels, text = orig_labels(*a, **k)
            return labels, text + " "
        monkeypatch.setattr(prepared, "token_meta_labels", token_meta_labels)
    elif stage == "slot":
        orig = prepared.slot_maps

        def slot_maps(labels, dummy):
            idx_map, idx_avg = orig(labels, dummy)
            k = next(iter(idx_map))
            return {**idx_map, k: idx_map[k] + 1}, idx_avg
        monkeypatch.setattr(prepared, "slot_maps", slot_maps)
    elif stage == "mean_activations":
        orig = stages.mean_head_activations
        monkeypatch.setattr(stages, "mean_head_activations", lambda *a, **k: _bump(orig(*a, **k)))
    elif stage == "indirect_effect":
        orig = stages.indirect_effects
        monkeypatch.setattr(stages, "indirect_effects", lambda *a, **k: _bump(orig(*a, **k)))
    elif stage == "top_heads":
        orig = stages.top_heads
        monkeypatch.setattr(stages, "top_heads", lambda *a, **k: (lambda h: [h[1], h[0]] + h[2:])(orig(*a, **k)))
    elif stage == "fv":
        orig = stages.function_vector

        def function_vector(*a, **k):
            out = orig(*a, **k)
            out.vector = _bump(out.vector)
            return out
        monkeypatch.setattr(stages, "function_vector", function_vector)
    elif stage == "injection":
        orig = stages.intervene

        def intervene(*a, **k):
            clean, edited = orig(*a, **k)
            return clean, edited + 1e-2
        monkeypatch.setattr(stages, "intervene", intervene)


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.first_pair
def test_perturbed_fv_fails_at_that_stage(parity_run, fv_options, fv_model_name, trials_set, monkeypatch, stage):
    if parity_run.result.status != "PASS":
        pytest.skip("the unperturbed run must pass first")
    compared_stage(parity_run, stage)
    if stage == "slot" and "trials" not in parity_run.src.values["slot"]:
        pytest.skip(f"{parity_run.other_side} hold the dummy labels alone, not the per-trial slot maps this perturbation changes")
    _perturb(monkeypatch, stage)
    t = parity_run.trials
    fvv = stages.fv_stage_values(parity_run.lm, t.subset(parity_run.params.max_trials), parity_run.params,
                                 t.meta.get("prefixes"), t.meta.get("separators"))
    result = compare_with(parity_run, fvv)
    assert result.status == "FAIL"
    assert result.earliest_failed_stage == stage, "\n".join(s.summary(3) for s in result.stages)
    assert result.first_divergence()["stage"] == stage
