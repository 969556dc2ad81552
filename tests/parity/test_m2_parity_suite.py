"""M2: the parity gate. Every stage of the fv runtime against the reference (live, exact) or its goldens."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import fv.parity.stages as stages
import fv.runtime.prepared as prepared
from fv.parity.compare import SKIP
from fv.parity.run import compare_with
from fv.parity.stages import PER_TRIAL_STAGES, STAGES

pytestmark = pytest.mark.m2


def _explain(run, result, key: str | None = None) -> str:
    head = (f"model {run.lm.name}, trials {run.trials.id}, source {run.source}, tolerance {run.tolerance.name}; "
            f"earliest failed stage: {run.result.earliest_failed_stage}")
    if key is None:
        return f"{head}\n{result.summary()}"
    lines = [str(m) for m in result.mismatches if m.trial_key == key][:20]
    return "\n".join([head, f"stage {result.name}, trial {key}:"] + result.detail + lines)


def _compared(run, stage: str):
    """The stage's result; a stage the goldens do not hold (a user's golden folder holds three) is skipped, not passed."""
    result = run.result.stage(stage)
    if result.status == SKIP:
        pytest.skip(f"{run.other_side}: {result.detail[0]}")
    return result


@pytest.mark.parametrize("stage", STAGES)
def test_stage(parity_run, stage):
    result = _compared(parity_run, stage)
    assert result.mismatch_count == 0, _explain(parity_run, result)
    if parity_run.source == "reference" and parity_run.tolerance.name == "exact":
        assert result.max_abs_diff == 0.0, _explain(parity_run, result)


@pytest.mark.parametrize("stage", PER_TRIAL_STAGES)
def test_stage_per_trial(parity_run, stage, trial_index):
    keys = parity_run.trial_keys
    if trial_index >= len(keys):
        pytest.skip(f"{parity_run.trials.id} has {len(keys)} trials")
    key = keys[trial_index]
    result = _compared(parity_run, stage)
    mismatch_count = result.per_trial.get(key, result.mismatch_count if result.detail and not result.per_trial else 0)
    assert mismatch_count == 0, _explain(parity_run, result, key)


def test_report_files(parity_run):
    paths = parity_run.report_paths
    assert set(paths) == {"parity_suite_report.json", "parity_suite_stages.csv", "injection_parity_trials.csv",
                          "injection_parity_report.json"}
    report = json.loads(paths["parity_suite_report.json"].read_text())
    assert report["status"] == parity_run.result.status
    assert report["earliest_failed_stage"] == parity_run.result.earliest_failed_stage
    assert [s["name"] for s in report["stages"]] == list(STAGES)
    assert report["meta"]["fixed_trials_sha256"] == parity_run.trials.sha256
    with paths["parity_suite_stages.csv"].open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == list(STAGES)
    with paths["injection_parity_trials.csv"].open() as fh:
        inj = list(csv.DictReader(fh))
    assert len(inj) == 2 * len(parity_run.trial_keys)
    assert {f'{r["trial_id"]}:{r["trial_idx"]}' for r in inj} == set(parity_run.trial_keys)


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
    _compared(parity_run, stage)
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
