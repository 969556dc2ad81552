"""A port by its files through the two faces a user types: ``pytest --port-artifacts DIR`` (tests/parity/
test_port_files.py, M4 to M7) and ``fv port check --port-artifacts DIR``; and the layout readers found from the folder
(``fv.ports.layouts``).

The folders: sunsikham/my_fv_project's relation q folder written by their own pipeline (fixtures/ports/my_fv_project/,
its README), a copy with one of their per-trial effects changed, and fv's own ``fv runtime run`` folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fv.errors import FVError
from fv.paths import FIXTURES, REPO_ROOT
from fv.ports import fv_layout, my_fv_project_files
from fv.ports.layouts import find_runs, layout_of
from tests.support.cli import assert_one_line_failure, run_cli

THEIRS = FIXTURES / "ports" / "my_fv_project" / "relation_tiny"
CSV = FIXTURES / "relation_tiny.csv"
SMALL = ["--n-top-heads", "3", "--edit-layer", "2"]


def _needs_reference(fv_options) -> None:
    if not fv_options.src_root and not os.environ.get("FV_SRC_ROOT"):
        pytest.skip("needs the live reference (--src-root or FV_SRC_ROOT)")


def _ref_args(fv_options) -> list[str]:
    args = ["--src-root", str(fv_options.src_root)] if fv_options.src_root else []
    args += ["--baukit-root", fv_options.baukit_root] if fv_options.baukit_root else []
    return args + (["--src-compat"] if fv_options.src_compat else [])


def _mutated_root(tmp_path: Path) -> Path:
    """A relation root with two q folders: their Q1 as written, and a copy whose p_patch of (trial 1, layer 5,
    head 2) is 1e-6 higher (5% of the largest effect)."""
    root = tmp_path / "relation_root" / "relation_tiny"
    shutil.copytree(THEIRS / "Q1", root / "Q1")
    shutil.copytree(THEIRS / "Q1", root / "Q1bad")
    metrics = root / "Q1bad" / "artifacts" / "trial_metrics.jsonl"
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines()]
    for r in rows:
        if (r["trial_idx"], r["layer"], r["head"]) == (1, 5, 2):
            r["p_patch"] += 1e-6
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root.parent


@pytest.fixture(scope="module")
def fv_run(tmp_path_factory) -> Path:
    """``fv runtime run`` on the tiny Llama, 2 trials: fv's own layout."""
    out = tmp_path_factory.mktemp("fvrun") / "run"
    rc, _out, err = run_cli(["runtime", "run", "--model", "tiny-llama", "--out", str(out), "--max-trials", "2",
                             "--no-plots", "--quiet"] + SMALL)
    assert rc == 0, err
    return out


# ---- the layouts, found from the folder ---------------------------------------------------------------------------
def test_each_folder_finds_its_layout(fv_run, tmp_path):
    assert layout_of(THEIRS / "Q1" / "artifacts") is my_fv_project_files
    assert layout_of(fv_run) is fv_layout
    root = _mutated_root(tmp_path)
    assert [(str(f.relative_to(root)), m.NAME) for f, m in find_runs(root)] == [
        ("relation_tiny/Q1/artifacts", "my_fv_project"), ("relation_tiny/Q1bad/artifacts", "my_fv_project")]
    with pytest.raises(FVError, match="no run folder in a known layout"):
        find_runs(tmp_path / "relation_root" / "relation_tiny" / "Q1" / "artifacts" / "stepD_mean_acts")
    with pytest.raises(FVError, match="no such layout; known: "):
        layout_of(fv_run, "their_layout")
    # named, the layout is taken as given (its reader then says what is missing)
    assert layout_of(fv_run, "my_fv_project") is my_fv_project_files


def test_fv_layout_trials_are_the_ones_the_run_used(fv_run):
    raw = fv_layout.fixed_trials(fv_run)
    assert len(raw["trials"]) == 2  # the run's --max-trials 2 of the file's 10
    side = fv_layout.side(fv_run)
    data = {"path": "x.json", "sha256": "", "file": {**raw, "trials": raw["trials"][:1]}}
    with pytest.raises(FVError, match="it ran trials"):
        side.describe(data, {"n_top_heads": 3, "max_trials": None})


# ---- fv port check ------------------------------------------------------------------------------------------------
@pytest.mark.slow(seconds=40)
def test_port_check_on_fv_layout_and_their_folders(fv_run, fv_options, tmp_path):
    """fv's own run folder: six stages bit-exact against the reference's own loader; their q folders under a root:
    Q1 passes the three stages their files hold, the changed copy fails at indirect_effect, naming the cell."""
    _needs_reference(fv_options)
    rc, out, err = run_cli(["port", "check", "--port-artifacts", str(fv_run), "--model", "tiny-llama", "--out",
                            str(tmp_path / "fvcheck"), "--quiet"] + SMALL + _ref_args(fv_options))
    assert rc == 0, out + err
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("  ") and ln.split()[0] != "not"}
    for stage in ("prompt", "slot", "mean_activations", "indirect_effect", "top_heads", "fv"):
        assert "PASS, bit-exact" in lines[stage], out
    assert "not compared: the run's dump keeps" in lines["injection"]
    summary = json.loads((tmp_path / "fvcheck" / "port_check.json").read_text())
    assert summary["runs"][0]["status"] == "NOT COMPARED" and summary["runs"][0]["not_compared"] == ["injection"]

    root = _mutated_root(tmp_path)
    rc, out, err = run_cli(["port", "check", "--port-artifacts", str(root), "--relation-csv", str(CSV), "--model",
                            "tiny-llama", "--out", str(tmp_path / "theirs"), "--quiet"] + SMALL + _ref_args(fv_options))
    assert rc == 1, out + err
    runs = {r["run"]: r for r in json.loads((tmp_path / "theirs" / "port_check.json").read_text())["runs"]}
    assert runs["relation_tiny/Q1/artifacts"]["status"] == "NOT COMPARED"
    assert runs["relation_tiny/Q1bad/artifacts"]["status"] == "FAIL"
    assert runs["relation_tiny/Q1bad/artifacts"]["earliest_failed_stage"] == "indirect_effect"
    report = json.loads(Path(runs["relation_tiny/Q1bad/artifacts"]["report"]).read_text())
    ie = next(s for s in report["stages"] if s["name"] == "indirect_effect")
    assert ie["mismatch_count"] == 1 and "[1, 5, 2]" in json.dumps(ie), ie
    assert "their files hold the prompt strings only" in out  # why a stage is not compared, in the port's terms


def test_port_check_refuses_in_one_line(tmp_path):
    rc, _out, err = run_cli(["port", "check", "--model", "tiny-llama", "--out", str(tmp_path)])
    assert_one_line_failure(rc, err, "give one port")
    rc, _out, err = run_cli(["port", "check", "--port", "a:B", "--model", "tiny-llama", "--out", str(tmp_path)])
    assert_one_line_failure(rc, err, "--port needs --fixed-trials")
    rc, _out, err = run_cli(["port", "check", "--port-artifacts", str(tmp_path), "--port-chain", "--model", "tiny-llama"])
    assert_one_line_failure(rc, err, "go with --port, not --port-artifacts")


def test_a_fixed_trials_file_of_another_tokenizer_is_refused(tmp_path):
    """Their trials checked against the tokenizer fv loads: a target id of another tokenizer is refused in one line."""
    folder = tmp_path / "Q1"
    shutil.copytree(THEIRS / "Q1" / "artifacts", folder)
    st = json.loads((folder / "sampled_trials.json").read_text())
    st["trials"][0]["target_first_token_id"] += 1
    (folder / "sampled_trials.json").write_text(json.dumps(st))
    from fv.model.loading import load_model
    from fv.model.tiny import ensure_tiny_model

    lm = load_model(str(ensure_tiny_model("tiny-llama")), "cpu", "float32")
    with pytest.raises(FVError, match="not the tokenizer they ran with"):
        my_fv_project_files.fixed_trials(folder, lm.tokenizer, CSV)
    with pytest.raises(FVError, match="--relation-csv PATH"):
        my_fv_project_files.fixed_trials(folder, lm.tokenizer, tmp_path / "gone.csv")


# ---- pytest --port-artifacts ------------------------------------------------------------------------------------
@pytest.mark.slow(seconds=45)
def test_pytest_port_artifacts_gates_each_q_folder(fv_options, tmp_path):
    """``pytest -m "m4 or m5 or m6 or m7" --port-artifacts ROOT`` as a user types it: one set of gates per q folder;
    Q1 passes where its files hold stages (the others skip as not compared), the changed copy fails at
    indirect_effect, trial 1:1, and fv's own runtime is not gated."""
    _needs_reference(fv_options)
    root = _mutated_root(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT")}
    cmd = [sys.executable, "-m", "pytest", str(REPO_ROOT / "tests"), "-m", "m4 or m5 or m6 or m7", "-p", "no:cacheprovider",
           "-p", "no:xdist", "-p", "no:randomly", "-q", "-rfs", "--fv-model", "tiny-llama", "--port-artifacts", str(root),
           "--relation-csv", str(CSV), "--src-model", "shared", "--fv-out", str(tmp_path / "out")] + SMALL + _ref_args(fv_options)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-4000:]
    passed = [ln for ln in text.splitlines() if "passed" in ln and "failed" in ln]
    assert passed, text[-3000:]
    failed = sorted({ln.split(" - ")[0].split("::")[-1] for ln in text.splitlines() if ln.startswith("FAILED")})
    # the changed copy: M5's indirect_effect, M6's trial 1 of it, and M7's q verdict; nothing of Q1
    assert failed == ["test_port_q[tiny-llama-relation_tiny/Q1bad/artifacts]",
                      "test_port_stage[tiny-llama-relation_tiny/Q1bad/artifacts-indirect_effect]",
                      "test_port_stage_per_trial[tiny-llama-trial1-relation_tiny/Q1bad/artifacts-indirect_effect]"], text[-4000:]
    assert "[1, 5, 2]" in text and "not compared: our side (my_fv_project files " in text
    assert "test_m4_runtime_run" not in text and "test_m2" not in text
    reports = sorted((tmp_path / "out").rglob("parity_suite_report.json"))
    assert len(reports) == 2, reports
    for r in reports:
        meta = json.loads(r.read_text())["meta"]
        assert meta["port"] == "my_fv_project files" and meta["port_folder"].startswith(str(root))


def test_port_artifacts_with_port_is_refused_at_the_door(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT")}
    proc = subprocess.run([sys.executable, "-m", "pytest", str(REPO_ROOT / "tests" / "parity" / "test_port_files.py"),
                           "-p", "no:cacheprovider", "-p", "no:xdist", "-q", "--port", "a:B", "--port-artifacts", str(THEIRS)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "--port and --port-artifacts name two ports" in proc.stdout + proc.stderr


@pytest.mark.slow(seconds=25)
def test_a_changed_value_in_fv_layout_fails_at_its_slot(fv_run, fv_options, tmp_path):
    """fv's own run folder with one mean activation changed (layer 3, head 1, slot 5): FAIL at mean_activations,
    naming that slot by its label; the stages before it still pass."""
    _needs_reference(fv_options)
    import torch

    copy = tmp_path / "run"
    shutil.copytree(fv_run, copy)
    mean = torch.load(copy / "mean_activations.pt", weights_only=True)
    mean[3, 1, 5, 0] += 0.5
    torch.save(mean, copy / "mean_activations.pt")
    rc, out, err = run_cli(["port", "check", "--port-artifacts", str(copy), "--model", "tiny-llama", "--out",
                            str(tmp_path / "check"), "--quiet"] + SMALL + _ref_args(fv_options))
    assert rc == 1, out + err
    report = json.loads(next((tmp_path / "check").rglob("parity_suite_report.json")).read_text())
    assert report["earliest_failed_stage"] == "mean_activations"
    stage = next(s for s in report["stages"] if s["name"] == "mean_activations")
    assert stage["mismatch_count"] == 1 and "[3, 1, 5, 0]" in json.dumps(stage)
    labels = json.loads((fv_run / "mean_activations_meta.json").read_text())["dummy_labels"]
    assert f"5 {labels[5][1]}" in stage["pattern"], stage["pattern"]  # the slot named by its label
    assert all(s["status"] == "PASS" for s in report["stages"] if s["name"] in ("prompt", "slot"))
