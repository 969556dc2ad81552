"""What PASS means: a gate with nothing to compare fails, a wrong option stops the session once, and a failing
report names the first differing element and where the mismatches fall."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fv.parity.compare import EXACT, compare_all
from fv.parity.pattern import multi_token_slots
from fv.parity.stages import StageValues
from fv.paths import FIXTURES, REPO_ROOT

pytestmark = pytest.mark.m2


def _pytest(*args: str, tmp_path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("FV_SRC_ROOT", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT",
                                                            "PYTEST_ADDOPTS")}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:randomly", "--fv-out", str(tmp_path / "out"), *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def foreign_trials(tmp_path_factory):
    """Trials no golden was made for: the embedded antonym data with another seed."""
    from fv.cli import main

    out = tmp_path_factory.mktemp("empty") / "fixed_trials_antonym_tiny_seed7.json"
    assert main(["make-trials", "--dataset", str(FIXTURES / "antonym_tiny.json"), "--out", str(out), "--n-trials", "2", "--seed", "7"]) == 0
    return out


def test_gate_with_nothing_to_compare_fails_in_one_line(foreign_trials, tmp_path):
    r = _pytest("-m", "m2", "-k", "test_stage and not per_trial", "--fv-model", "tiny-llama", "--fixed-trials", str(foreign_trials),
                tmp_path=tmp_path)
    lines = [line for line in r.stdout.splitlines() if "[fv: nothing to compare]" in line]
    assert r.returncode == 1, r.stdout[-3000:]
    assert len(lines) == 1 and lines[0].startswith("FAIL") and "--src-root" in lines[0], r.stdout[-3000:]
    r = _pytest("-m", "m2", "-k", "test_stage and not per_trial", "--fv-model", "tiny-llama", "--fixed-trials", str(foreign_trials),
                "--allow-empty", tmp_path=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:]


def test_a_model_without_goldens_is_compared_live_and_no_golden_is_demanded(foreign_trials, reference, fv_options, tmp_path):
    """With the live reference as the other side, trials no golden was made for pass on the live comparison: the
    golden checks step aside (counted in the `fv skips:` line), nothing fails for a missing golden. Without the
    reference the same session compares nothing and fails (the test above)."""
    live = ["--src-root", str(reference.src_root)] + (["--baukit-root", fv_options.baukit_root] if fv_options.baukit_root else [])
    live += ["--src-compat"] if fv_options.src_compat else []
    r = _pytest("-m", "m1 or m2", "-k", "test_golden or (test_stage and not per_trial)", "-rs", "--fv-model", "tiny-llama",
                "--fixed-trials", str(foreign_trials), *live, tmp_path=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "passed" in r.stdout.splitlines()[-1] and "failed" not in r.stdout.splitlines()[-1], r.stdout[-3000:]
    assert "golden" not in "".join(line for line in r.stdout.splitlines() if line.startswith("FAILED")), r.stdout[-3000:]
    skips = [line for line in r.stdout.splitlines() if "[fv: no golden, compared live]" in line]
    assert len(skips) == 8, r.stdout[-3000:]  # one per golden artifact
    assert "golden checks found no golden and were compared live with the reference instead" in r.stdout, r.stdout[-3000:]


@pytest.mark.parametrize("option", [["--fv-model", "/nonexistent"], ["--edit-layer", "99"], ["--q-list", "Q99"],
                                    ["--src-root", "/nonexistent/src"], ["--relation-csv", "/nonexistent.csv"]])
def test_wrong_option_stops_the_session_once(option, tmp_path):
    r = _pytest("-m", "m2", "--fv-model", "tiny-llama", *option, tmp_path=tmp_path)  # the later --fv-model wins
    assert r.returncode == 4, r.stdout[-2000:] + r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("ERROR: fv:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_broken_trials_file_stops_the_session_once(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"meta": {}, "trials": [')
    r = _pytest("-m", "m2", "--fv-model", "tiny-llama", "--fixed-trials", str(bad), tmp_path=tmp_path)
    assert r.returncode == 4 and r.stderr.count("ERROR: fv:") == 1, r.stderr[-2000:]


@pytest.mark.first_pair
def test_planted_change_reports_first_element_and_pattern(parity_run):
    """A change in how multi-token words are averaged touches exactly the multi-token slots: the report's first
    divergence is the first differing element in index order, and its pattern names those slots."""
    src = parity_run.src
    multi = multi_token_slots(src.values["slot"])
    if not multi:
        pytest.skip("these trials have no multi-token word")
    planted = StageValues(values=dict(src.values), durations={})
    mean = src.values["mean_activations"].clone()
    mean[:, :, multi] += 1e-3  # every layer and head, only the multi-token slots
    planted.values["mean_activations"] = mean
    result = compare_all(planted, src, EXACT, parity_run.trial_keys, {})
    stage = result.stage("mean_activations")
    bad = torch.nonzero(mean != src.values["mean_activations"])
    assert result.first_divergence()["key"] == str(bad[0].tolist())
    assert f"exactly the {len(multi)} multi-token word slots, no others" in stage.pattern
    info = parity_run.lm.info
    assert f"{info.n_layers} of {info.n_layers} layers (all)" in stage.pattern
    assert stage.worst is not None and "first differing index" in "\n".join(stage.detail)
