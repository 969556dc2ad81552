"""``fv doctor``: the OK path on a tiny model and the FAIL paths a user meets first."""

from __future__ import annotations

import pytest

from fv.cli import main

pytestmark = pytest.mark.tiny


def _run(capsys, *args):
    rc = main(["doctor", *args])
    return rc, capsys.readouterr().out


def test_ok_on_tiny_model(capsys, fixed_trials, fv_model):
    rc, out = _run(capsys, "--model", str(fv_model.path), "--fixed-trials", str(fixed_trials.path), "--device", "cpu")
    assert rc == 0, out
    assert f"OK   model: {fv_model.path}: {fv_model.info.n_layers} layers" in out
    assert "OK   edit layer: --edit-layer 9 fits" in out
    assert f"OK   trial token ids: all {len(fixed_trials.trials)} match" in out
    assert out.rstrip().endswith("0 FAIL")


def test_fail_paths(capsys, tmp_path, fv_model):
    rc, out = _run(capsys, "--model", str(tmp_path / "no-such-model"))
    assert rc == 1 and "FAIL model:" in out and "not found: no local folder" in out
    rc, out = _run(capsys, "--model", str(fv_model.path), "--edit-layer", "99")
    assert rc == 1 and "FAIL edit layer: --edit-layer 99 is outside" in out
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    rc, out = _run(capsys, "--model", str(fv_model.path), "--fixed-trials", str(bad))
    assert rc == 1 and "FAIL fixed trials:" in out and "not valid JSON (line 1" in out
    rc, out = _run(capsys, "--model", str(fv_model.path), "--src-root", str(tmp_path))
    assert rc == 1 and "FAIL reference:" in out


def test_foreign_trials_fail(capsys, fv_model, fixture_data):
    rc, out = _run(capsys, "--model", str(fv_model.path), "--fixed-trials", str(fixture_data / "fixed_trials_antonym_t10_s10_seed0.json"))
    assert rc == 1 and "FAIL trial token ids: 10 of 10 disagree" in out


def test_reference_and_injection_probe(capsys, reference, fv_model):
    rc, out = _run(capsys, "--model", str(fv_model.path), "--src-root", str(reference.src_root))
    assert f"OK   reference: {reference.src_root} imports" in out
    assert "reference injection:" in out
