"""A port by its files (``--port-artifacts DIR``, docs/ports.md): each run folder a port wrote, read by its layout's
reader (``fv.ports.layouts``), gated against the reference run on the trials the folder holds.

Collected only with ``--port-artifacts`` (fv's own runtime is then not gated); one set of tests per run folder:

- M4: the folder is read in its layout and holds at least one stage fv can compare (its other stages named, not
  compared);
- M5: every stage it holds equals the reference's within the compute dtype's tolerance (a port reorders
  floating-point work; each stage's max abs difference says whether it is bit-exact anyway);
- M6: the same, trial by trial;
- M7: a relation root's q folders, one verdict each.

    pytest -m "m4 or m5 or m6" --fv-model MODEL --port-artifacts RUN_DIR --src-root SRC
    pytest -m m7 --fv-model MODEL --port-artifacts RELATION_ROOT --relation-csv CSV --src-root SRC
"""

from __future__ import annotations

import pytest

from fv.parity.stages import PER_TRIAL_STAGES, STAGES
from fv.pytest_plugin import parity_for
from fv.pytest_plugin.session import port_files_for
from tests.support.stage_parity import compared_stage

pytestmark = pytest.mark.port_files


@pytest.fixture(scope="session")
def port_parity(fv_options, fv_model, port_run):
    """The run folder against the reference, on the trials the folder holds (all of them)."""
    folder, reader = port_run
    side, trials = port_files_for(fv_options, fv_model, folder, reader)
    return parity_for(fv_options, fv_model, trials, require_reference=True, ours=side)


def _explain(run, result=None, key: str | None = None) -> str:
    lines = [f"our side: {(getattr(run.result, 'meta', None) or {}).get('our_side')}",
             f"model {run.lm.name}, trials {run.trials.path}, against {run.other_side}, tolerance {run.tolerance.name}; "
             f"earliest failed stage: {run.result.earliest_failed_stage}"]
    lines += [f"  {s.name}: {s.status}, {s.mismatch_count} mismatches, max_abs_diff {s.max_abs_diff}" for s in run.result.stages]
    if result is not None:
        lines.append(result.summary(10) if key is None else "\n".join(
            [f"stage {result.name}, trial {key}:"] + [str(m) for m in result.mismatches if m.trial_key == key][:10]))
    return "\n".join(lines)


@pytest.mark.m4
def test_port_folder_holds_comparable_stages(port_parity):
    compared = [s.name for s in port_parity.result.stages if s.status != "SKIP"]
    assert compared, "the folder holds no stage fv can compare:\n" + _explain(port_parity)
    assert port_parity.result.not_compared_line or len(compared) == len(STAGES)


@pytest.mark.m5
@pytest.mark.parametrize("stage", STAGES)
def test_port_stage(port_parity, stage):
    result = compared_stage(port_parity, stage)
    assert result.mismatch_count == 0, _explain(port_parity, result)


@pytest.mark.m6
@pytest.mark.parametrize("stage", PER_TRIAL_STAGES)
def test_port_stage_per_trial(port_parity, stage, trial_index):
    keys = port_parity.trial_keys
    if trial_index >= len(keys):
        pytest.skip(f"the folder holds {len(keys)} trials")
    result = compared_stage(port_parity, stage)
    assert result.per_trial.get(keys[trial_index], 0) == 0, _explain(port_parity, result, keys[trial_index])


@pytest.mark.m7
def test_port_q(port_parity):
    """One q folder of a relation root: every stage it holds agrees with the reference."""
    bad = [s.name for s in port_parity.result.stages if s.mismatch_count]
    assert not bad, _explain(port_parity)
