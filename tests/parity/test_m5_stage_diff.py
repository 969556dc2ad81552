"""M5: the stage diff of two output folders finds the first divergence at exactly the stage, file and key changed.

A perturbed copy of one artifact yields a first divergence at exactly that stage, file and key; identical folders
yield none; bad input is reported, not crashed on."""

from __future__ import annotations

import json
import shutil

import pytest

from fv.errors import FVError
from fv.io import load_tensor_file, save_tensors, write_json
from fv.parity.diff import diff_folders, write_diff_report

pytestmark = pytest.mark.m5


def _edit_json(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    write_json(path, data)


def _edit_tensor(path, index):
    t = load_tensor_file(path).clone()
    t[index] += 0.25
    save_tensors(path, t)


def _swap_heads(d):
    d[0], d[1] = d[1], d[0]


def _bump_logprob(d):
    d["trials"][2]["injection"]["zero_shot"]["with_logprob"] += 0.5


def _set(d, path, value):
    *head, last = path
    for p in head:
        d = d[p]
    d[last] = value


# (stage, file, what to change, expected key, trial row or None)
CASES = [
    ("prompt", "fv_runtime_dump.json", lambda f: _edit_json(f, lambda d: _set(d, ["trials", 1, "clean_input_ids", 3], d["trials"][1]["clean_input_ids"][3] + 1)), "clean_input_ids[3]", 1),
    ("slot", "fv_runtime_dump.json", lambda f: _edit_json(f, lambda d: _set(d, ["trials", 1, "slots", "clean", "token_labels", 5, 2], "separator_token_x")), "slots.clean.token_labels[5][2]", 1),
    ("mean_activations", "mean_activations.pt", lambda f: _edit_tensor(f, (2, 1, 3, 4)), "[2, 1, 3, 4]", None),
    ("indirect_effect", "indirect_effect.pt", lambda f: _edit_tensor(f, (1, 2, 3)), "[1, 2, 3]", 1),
    ("top_heads", "top_heads.json", lambda f: _edit_json(f, _swap_heads), "[0]", None),
    ("fv", "fv_global_resid.pt", lambda f: _edit_tensor(f, (7,)), "[7]", None),
    ("injection", "fv_runtime_dump.json", lambda f: _edit_json(f, _bump_logprob), "injection.zero_shot.with_logprob", 2),
]


@pytest.fixture
def fv_copy(runtime_dir, tmp_path):
    dst = tmp_path / "fv_copy"
    shutil.copytree(runtime_dir, dst)
    return dst


def test_identical_folders_have_no_divergence(runtime_dir, fv_copy, tmp_path):
    report = diff_folders(runtime_dir, fv_copy)
    assert report["first_divergence"] is None
    assert report["status"] == "PASS" and report["mismatch_count"] == 0
    paths = write_diff_report(report, tmp_path / "report")
    assert "First divergence: none" in paths["md"].read_text()
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("stage,file,change,key,row", CASES, ids=[c[0] for c in CASES])
def test_perturbation_found_at_its_stage(runtime_dir, fv_copy, stage, file, change, key, row):
    change(fv_copy / file)
    report = diff_folders(runtime_dir, fv_copy)
    fd = report["first_divergence"]
    assert fd is not None and report["status"] == "FAIL"
    assert (fd["stage"], fd["key"]) == (stage, key), fd
    assert file in fd["file"]
    if row is not None:
        dump = json.loads((runtime_dir / "fv_runtime_dump.json").read_text())
        assert (fd["trial_id"], fd["trial_idx"]) == (dump["trials"][row]["trial_id"], dump["trials"][row]["trial_idx"])
    earlier = [s for s in report["stages"] if s["stage"] != stage][: [s["stage"] for s in report["stages"]].index(stage)]
    assert all(s["status"] == "PASS" for s in earlier)


def test_missing_artifact_is_reported(runtime_dir, fv_copy):
    (fv_copy / "mean_activations.pt").unlink()
    report = diff_folders(runtime_dir, fv_copy)
    stage = next(s for s in report["stages"] if s["stage"] == "mean_activations")
    assert stage["status"] == "MISSING" and "missing in the fv folder" in stage["note"]
    assert report["status"] == "FAIL"


def test_shape_mismatch_names_both_shapes(runtime_dir, fv_copy):
    t = load_tensor_file(fv_copy / "mean_activations.pt")
    save_tensors(fv_copy / "mean_activations.pt", t[:, :, :-1])
    report = diff_folders(runtime_dir, fv_copy)
    stage = next(s for s in report["stages"] if s["stage"] == "mean_activations")
    assert stage["note"] == f"shapes differ: src {tuple(t.shape)} vs fv {tuple(t[:, :, :-1].shape)}"


def test_different_trials_refused(runtime_dir, fv_copy):
    _edit_json(fv_copy / "fv_runtime_dump.json", lambda d: d["meta"].update(fixed_trials_sha256="0" * 64))
    with pytest.raises(FVError, match="different fixed-trials files"):
        diff_folders(runtime_dir, fv_copy)


def test_diff_cli_exit_codes(runtime_dir, fv_copy, tmp_path, capsys):
    from fv.cli import main

    assert main(["diff", "--src", str(runtime_dir), "--fv", str(fv_copy), "--out", str(tmp_path / "a")]) == 0
    _edit_tensor(fv_copy / "fv_global_resid.pt", (0,))
    assert main(["diff", "--src", str(runtime_dir), "--fv", str(fv_copy), "--out", str(tmp_path / "b")]) == 1
    assert "first divergence: stage fv" in capsys.readouterr().out
    assert main(["diff", "--src", str(tmp_path / "nowhere"), "--fv", str(fv_copy), "--out", str(tmp_path / "c")]) == 1
