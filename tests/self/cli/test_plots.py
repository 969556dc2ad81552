"""Pictures: every one is a real PNG of a sensible size, drawn from exactly the artifacts' numbers, and `fv plot`
redraws them from the artifacts alone. Without matplotlib the commands say so in one line."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from fv.io import load_tensor_file
from fv.plots import IE_PNG, SWEEP_PNG, PlotsUnavailable, draw_diff, draw_run, mean_effect, redraw

pytestmark = pytest.mark.m4


def _png(path):
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
    assert 300 <= w <= 4000 and 200 <= h <= 4000, f"{path}: {w}x{h}"
    return w, h


@pytest.fixture(scope="session")
def swept_run(fv_model, fixed_trials, tmp_path_factory):
    """`fv run` over two edit layers: both pictures of a run."""
    from fv.cli import main

    out = tmp_path_factory.mktemp("plots-run")
    rc = main(["run", "--model", str(fv_model.path), "--fixed-trials", str(fixed_trials.path), "--out", str(out),
               "--max-trials", "2", "--edit-layers", "8-9", "--quiet", "--device", str(fv_model.device)])
    assert rc == 0
    return out


def test_run_pictures_hold_the_artifacts(swept_run):
    _png(swept_run / IE_PNG)
    _png(swept_run / SWEEP_PNG)
    pics = {p.path.name: p for p in draw_run(swept_run)}
    ie = load_tensor_file(swept_run / "indirect_effect.pt")
    assert np.array_equal(pics[IE_PNG].data["mean_indirect_effect"], ie.double().mean(0).numpy())
    top = json.loads((swept_run / "top_heads.json").read_text())  # boxed and ranked on the heatmap
    assert pics[IE_PNG].data["heads"].tolist() == [[int(l), int(h)] for l, h, _ in top] and len(top) == 10
    sweep = pics[SWEEP_PNG].data
    assert sweep["layer"].tolist() == [8, 9]
    for i, layer in enumerate((8, 9)):
        s = json.loads((swept_run / f"step6_results_L{layer}.json").read_text())["summary"]["by_prompt_set"]
        assert sweep["zero_shot.mean_delta_logprob"][i] == s["zero_shot"]["mean_delta_logprob"]
        assert sweep["shuffled.mean_delta_p"][i] == s["shuffled"]["mean_delta_p"]
        assert sweep["zero_shot.acc_with"][i] == s["zero_shot"]["acc_with"]


def test_fv_plot_redraws_from_artifacts_alone(swept_run, tmp_path, capsys):
    from fv.cli import main

    copy = tmp_path / "copy"
    shutil.copytree(swept_run, copy)
    for png in copy.glob("*.png"):
        png.unlink()
    assert main(["plot", str(copy)]) == 0
    assert "2 pictures" in capsys.readouterr().out
    assert (copy / IE_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (copy / SWEEP_PNG).is_file()


def test_diff_picture_holds_both_sides(tmp_path):
    import torch

    a = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4) / 100
    b = a.clone()
    b[1, 2, 3] += 0.5
    pic = draw_diff(tmp_path / "d.png", a, b, "test")
    _png(pic.path)
    assert np.array_equal(pic.data["src"], mean_effect(a)) and np.array_equal(pic.data["fv"], mean_effect(b))
    assert np.count_nonzero(pic.data["diff"]) == 1 and pic.data["diff"][2, 3] == pytest.approx(0.25)


@pytest.mark.first_pair
def test_relation_pictures(tmp_path, fv_model_name, fv_options):
    from fv.paths import FIXTURES
    from fv.pipelines.relation import RelationConfig, relation_root, run_relation
    from fv.plots import ALL_Q_PNG, draw_relation

    cfg = RelationConfig(relation_csv=str(FIXTURES / "relation_tiny.csv"), out=str(tmp_path), model=fv_model_name,
                         n_trials_per_q=1, edit_layers="8-9", q_list=["Q1", "Q2"], device=fv_options.device)
    run_relation(cfg)
    root = relation_root(cfg)
    pics = draw_relation(root)
    names = sorted(str(p.path.relative_to(root)) for p in pics)
    assert names == sorted([f"Q1/{IE_PNG}", f"Q1/{SWEEP_PNG}", f"Q2/{IE_PNG}", f"Q2/{SWEEP_PNG}", ALL_Q_PNG])
    for p in pics:
        _png(p.path)
    grid = next(p for p in pics if p.path.name == ALL_Q_PNG)
    for q in ("Q1", "Q2"):
        assert np.array_equal(grid.data[f"{q}.mean_indirect_effect"], load_tensor_file(root / q / "indirect_effect.pt").double().mean(0).numpy())
    assert len(redraw(tmp_path)) == len(pics)


def test_without_matplotlib_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(PlotsUnavailable, match=r"pip install 'fv\[plots\]'") as exc:
        redraw(tmp_path)
    assert "\n" not in str(exc.value)
