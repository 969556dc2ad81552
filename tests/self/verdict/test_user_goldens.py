"""M1/M2 on a user's own goldens: the files src writes under ``results/<dataset>/<fixed_trials_id>/``.

The golden folder here is made by the live reference (its functions through fv.reference, saved with torch.save
under src's file names), never written by hand; then it drives the gate (``--golden-dir``), is imported as
snapshots (``fv golden import``) and round-trips, and every way it can fail to fit says which file and what.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fv.errors import FVError
from fv.io import save_tensors, write_json
from fv.parity.golden import load_goldens
from fv.parity.run import run_parity
from fv.parity.stages import Params
from fv.parity.user_goldens import USER_FILES, USER_GOLDENS, golden_source, import_goldens
from fv.paths import FIXTURES, REPO_ROOT
from fv.pytest_plugin import parity_for, trials_for

pytestmark = [pytest.mark.m1, pytest.mark.first_pair]
COMPARED = ["slot", "mean_activations", "indirect_effect"]
_MADE: dict = {}


def write_user_goldens(folder: Path, dataset: str, mean: torch.Tensor, labels: list, ie: torch.Tensor) -> Path:
    """The three files under src's names: two torch.save'd tensors and ``{"labels": [...]}``."""
    save_tensors(folder / USER_FILES["mean_activations"].format(dataset=dataset), mean)
    write_json(folder / USER_FILES["dummy_labels"].format(dataset=dataset), {"labels": labels})
    save_tensors(folder / USER_FILES["indirect_effect"].format(dataset=dataset), ie)
    return folder


@pytest.fixture
def user_goldens(reference, fv_model, fv_options, tmp_path_factory):
    """(folder, trials, live run): ``results/antonym_tiny/<trials id>/`` as the user's src wrote it. The values are
    the live reference's from the session's cached M1/M2 run on these trials (computed once for both)."""
    ft = trials_for(fv_options, fv_model, FIXTURES / "antonym_tiny.json")
    run = parity_for(fv_options, fv_model, ft, require_reference=True)
    key = (fv_model.name, ft.sha256)
    if key not in _MADE:
        src = run.src.values
        folder = tmp_path_factory.mktemp("user") / "results" / "antonym_tiny" / ft.id
        _MADE[key] = write_user_goldens(folder, "antonym_tiny", src["mean_activations"], src["slot"]["dummy_labels"],
                                        src["indirect_effect"])
    return _MADE[key], ft, run


def _compared(run) -> list[str]:
    return [s.name for s in run.result.stages if s.status != "SKIP"]


def test_golden_dir_is_the_other_side(user_goldens, fv_model, tmp_path):
    folder, ft, live = user_goldens
    gs = golden_source(folder, fv_model, ft)
    assert gs.n_trials == len(live.trial_keys)
    # fv's values as the live run computed them (the same trials and parameters): only the other side changes
    run = run_parity(fv_model, ft, Params(max_trials=gs.n_trials), None, tmp_path, golden=gs, fv_values=live.fv)
    assert run.source == USER_GOLDENS and str(folder) in run.other_side
    assert _compared(run) == COMPARED and run.result.status == "PASS", "\n".join(s.summary(3) for s in run.result.stages)
    report = json.loads((tmp_path / "parity_suite_report.json").read_text())
    assert str(folder) in report["meta"]["other_side"]


def test_import_round_trips(user_goldens, fv_model, tmp_path):
    folder, ft, live = user_goldens
    n = len(live.trial_keys)
    dest = import_goldens(folder, fv_model, ft, tmp_path / "snapshots")
    assert dest == tmp_path / "snapshots" / fv_model.name / ft.id / f"t{n}"
    held = load_goldens(dest)
    for name, stage in (("mean_activations", "mean_activations"), ("indirect_effect", "indirect_effect")):
        original = torch.load(folder / USER_FILES[name].format(dataset="antonym_tiny"), weights_only=True)
        assert torch.equal(held.values[stage], original) and held.values[stage].dtype == original.dtype
    labels = json.loads((folder / USER_FILES["dummy_labels"].format(dataset="antonym_tiny")).read_text())["labels"]
    assert held.values["slot"] == {"dummy_labels": labels}
    prov = json.loads((dest.parent / f"t{n}.meta.json").read_text())
    assert prov["imported_from"] == str(folder.resolve()) and prov["source"] == USER_GOLDENS
    assert set(prov["files"]) == set(USER_FILES)
    run = run_parity(fv_model, ft, Params(max_trials=n), None, None, snapshot_root=tmp_path / "snapshots", fv_values=live.fv)
    assert _compared(run) == COMPARED and run.result.status == "PASS" and str(folder.resolve()) in run.other_side
    with pytest.raises(FVError, match="already holds goldens .* Pass --force"):
        import_goldens(folder, fv_model, ft, tmp_path / "snapshots")
    assert import_goldens(folder, fv_model, ft, tmp_path / "snapshots", force=True) == dest


@pytest.mark.parametrize("break_it, file_key, needle", [
    (lambda m, l, ie: (m[:, :, :-1], l, ie), "mean_activations", "expected shape"),
    (lambda m, l, ie: (m, l[:-1], ie), "dummy_labels", "slots"),
    (lambda m, l, ie: (m, l, torch.cat([ie] * 11)), "indirect_effect", "expected at most 10 trials"),
    (lambda m, l, ie: (m, l, ie[:, :, :-1]), "indirect_effect", "layers and heads"),
    (lambda m, l, ie: (m[0], l, ie), "mean_activations", "expected a 4-D tensor"),
], ids=["slot-count", "label-count", "trial-count", "head-count", "not-4d"])
def test_goldens_that_do_not_fit_say_which_file(user_goldens, fv_model, tmp_path, break_it, file_key, needle):
    folder, ft, _live = user_goldens
    mean = torch.load(folder / USER_FILES["mean_activations"].format(dataset="antonym_tiny"), weights_only=True)
    labels = json.loads((folder / USER_FILES["dummy_labels"].format(dataset="antonym_tiny")).read_text())["labels"]
    ie = torch.load(folder / USER_FILES["indirect_effect"].format(dataset="antonym_tiny"), weights_only=True)
    bad = write_user_goldens(tmp_path / "bad", "antonym_tiny", *break_it(mean, labels, ie))
    with pytest.raises(FVError) as e:
        golden_source(bad, fv_model, ft)
    msg = str(e.value)
    assert "\n" not in msg and USER_FILES[file_key].format(dataset="antonym_tiny") in msg and needle in msg and "found" in msg


def test_missing_golden_file_is_named(user_goldens, fv_model, tmp_path):
    folder, ft, _live = user_goldens
    (tmp_path / "part").mkdir()
    name = USER_FILES["mean_activations"].format(dataset="antonym_tiny")
    (tmp_path / "part" / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(FVError, match="antonym_tiny_dummy_labels.json, antonym_tiny_indirect_effect.pt missing"):
        golden_source(tmp_path / "part", fv_model, ft)


@pytest.mark.slow
def test_pytest_golden_dir_drives_m1_and_m2(user_goldens, fv_model_name, tmp_path):
    """``pytest -m "m1 or m2" --golden-dir DIR --fixed-trials FT``: the compared stages pass, the others are skipped,
    and the terminal table names the folder as the other side."""
    folder, ft, _live = user_goldens
    cmd = [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "-q", "-m", "m1 or m2", "-rs",
           str(REPO_ROOT / "tests" / "golden" / "test_m1_golden_replay.py"), str(REPO_ROOT / "tests" / "parity" / "test_m2_stage_parity.py"),
           "--fv-model", fv_model_name, "--fixed-trials", str(ft.path), "--golden-dir", str(folder),
           "--fv-out", str(tmp_path / "out"), "-k", "not perturbed"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert f"PASS against user goldens in {folder}" in out, out[-4000:]
    assert " failed" not in out and "passed" in out
