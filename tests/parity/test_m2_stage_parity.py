"""M2: every stage of the fv runtime equals the reference's (live, bit for bit when exact) or its goldens, per trial too."""

from __future__ import annotations

import csv
import json

import pytest

from fv.parity.stages import PER_TRIAL_STAGES, STAGES
from tests.support.stage_parity import compared_stage

pytestmark = pytest.mark.m2


def _explain(run, result, key: str | None = None) -> str:
    head = (f"model {run.lm.name}, trials {run.trials.id}, source {run.source}, tolerance {run.tolerance.name}; "
            f"earliest failed stage: {run.result.earliest_failed_stage}")
    if key is None:
        return f"{head}\n{result.summary()}"
    lines = [str(m) for m in result.mismatches if m.trial_key == key][:20]
    return "\n".join([head, f"stage {result.name}, trial {key}:"] + result.detail + lines)


@pytest.mark.parametrize("stage", STAGES)
def test_stage(parity_run, stage):
    result = compared_stage(parity_run, stage)
    assert result.mismatch_count == 0, _explain(parity_run, result)
    if parity_run.source == "reference" and parity_run.tolerance.name == "exact":
        assert result.max_abs_diff == 0.0, _explain(parity_run, result)


@pytest.mark.parametrize("stage", PER_TRIAL_STAGES)
def test_stage_per_trial(parity_run, stage, trial_index):
    keys = parity_run.trial_keys
    if trial_index >= len(keys):
        pytest.skip(f"{parity_run.trials.id} has {len(keys)} trials")
    key = keys[trial_index]
    result = compared_stage(parity_run, stage)
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
