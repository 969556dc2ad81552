"""M4: the fv runtime alone writes every artifact, loadable, with the shapes the model implies and consistent ids."""

from __future__ import annotations

import json

import pytest
import torch

from fv.io import load_tensor_file
from fv.pipelines.run import RUNTIME_FILES, RunConfig, run_runtime

pytestmark = pytest.mark.m4


@pytest.mark.parametrize("name", RUNTIME_FILES + ("step6_results_L{edit_layer}.json", "fv_runtime_dump.json"))
def test_artifact_exists(runtime_dir, fv_options, fv_model, name):
    path = runtime_dir / name.format(edit_layer=fv_options.edit_layer_for(fv_model.path, fv_model.info.n_layers))
    assert path.is_file() and path.stat().st_size > 0, f"{path.name} missing in {runtime_dir}"
    if path.suffix == ".json":
        json.loads(path.read_text())


def test_tensors_have_model_shapes(runtime_dir, fv_model, fv_options, fixed_trials):
    info = fv_model.info
    n = len(fixed_trials.subset(fv_options.max_trials))
    mean = load_tensor_file(runtime_dir / "mean_activations.pt")
    meta = json.loads((runtime_dir / "mean_activations_meta.json").read_text())
    assert tuple(mean.shape) == (info.n_layers, info.n_heads, len(meta["dummy_labels"]), info.head_dim)
    assert mean.dtype == torch.float32 and torch.isfinite(mean).all()
    assert tuple(load_tensor_file(runtime_dir / "indirect_effect.pt").shape) == (n, info.n_layers, info.n_heads)
    assert tuple(load_tensor_file(runtime_dir / "fv_by_layer.pt").shape) == (info.n_layers, info.d_model)
    assert tuple(load_tensor_file(runtime_dir / "fv_global_resid.pt").shape) == (info.d_model,)
    assert meta["fixed_trials_sha256"] == fixed_trials.sha256 and meta["model_config_sha256_16"] == fv_model.config_hash


def test_fv_by_layer_sums_to_fv(runtime_dir):
    by_layer = load_tensor_file(runtime_dir / "fv_by_layer.pt")
    fv = load_tensor_file(runtime_dir / "fv_global_resid.pt").float()
    assert torch.allclose(by_layer.sum(0), fv, atol=1e-5, rtol=1e-4), (by_layer.sum(0) - fv).abs().max()


def test_top_heads_sorted_and_in_fv(runtime_dir, fv_model, fv_options):
    heads = json.loads((runtime_dir / "top_heads.json").read_text())
    assert len(heads) == fv_options.n_top_heads
    scores = [s for _, _, s in heads]
    assert scores == sorted(scores, reverse=True)
    assert len({(l, h) for l, h, _ in heads}) == len(heads)
    assert all(0 <= l < fv_model.info.n_layers and 0 <= h < fv_model.info.n_heads for l, h, _ in heads)
    by_layer = load_tensor_file(runtime_dir / "fv_by_layer.pt")
    used = {l for l, _, _ in heads}
    assert all((by_layer[l].abs().sum() > 0) == (l in used) for l in range(fv_model.info.n_layers))


def test_target_ids_match_trials(runtime_dir, fixed_trials, fv_options):
    wanted = {(t.trial_id, t.trial_idx): t.first_token_id for t in fixed_trials.subset(fv_options.max_trials)}
    rows = [json.loads(line) for line in (runtime_dir / "eval_trials.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * len(wanted)
    mismatches = [(r["trial_id"], r["trial_idx"], r["prompt_set"], r["target_id"], wanted[(r["trial_id"], r["trial_idx"])])
                  for r in rows if r["target_id"] != wanted[(r["trial_id"], r["trial_idx"])]]
    assert len(mismatches) == 0, mismatches
    dump = json.loads((runtime_dir / "fv_runtime_dump.json").read_text())
    assert {(t["trial_id"], t["trial_idx"]): t["target_id"] for t in dump["trials"]} == wanted


def test_eval_summary_consistent(runtime_dir):
    summary = json.loads((runtime_dir / "eval_summary.json").read_text())
    rows = [json.loads(line) for line in (runtime_dir / "eval_trials.jsonl").read_text().splitlines()]
    # each prompt set's figures apart and named; no field pools the zero-shot and shuffled rows
    assert not {"n", "acc_base", "mean_delta_p", "mean_delta_logprob"} & set(summary), sorted(summary)
    for ps, s in summary["by_prompt_set"].items():
        mine = [r for r in rows if r["prompt_set"] == ps]
        assert s["n"] == len(mine) > 0
        assert s["acc_base"] == pytest.approx(sum(r["accuracy_base"] for r in mine) / len(mine))
        assert s["mean_delta_logprob"] == pytest.approx(sum(r["delta_logprob"] for r in mine) / len(mine))
        assert s["mean_delta_p"] == pytest.approx(sum(r["delta_p"] for r in mine) / len(mine))
        assert s["delta_acc"] == pytest.approx(s["acc_with"] - s["acc_base"])
    assert set(summary["by_prompt_set"]) == {"zero_shot", "shuffled"}


def test_resume_skips_finished_stages(runtime_dir, fv_model, fixed_trials, fv_options, tmp_path, capsys):
    """A resumed run recomputes nothing whose inputs are unchanged and leaves the artifacts byte-identical."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(runtime_dir, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.suffix == ".pt"}
    cfg = RunConfig(n_top_heads=fv_options.n_top_heads, edit_layers=[fv_options.edit_layer_for(fv_model.path, fv_model.info.n_layers)], max_trials=fv_options.max_trials, resume=True)
    lines: list[str] = []
    result = run_runtime(fv_model, fixed_trials, copy, cfg, log=lines.append)
    assert "mean activations: reused mean_activations.pt (inputs unchanged)" in lines
    assert "indirect effect: reused indirect_effect.pt (inputs unchanged)" in lines
    assert result.computed == [] and "mean_activations" in result.reused and "indirect_effect" in result.reused
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.suffix == ".pt"} == before


def test_edit_layer_outside_model_is_refused(fv_model, fixed_trials, tmp_path):
    from fv.errors import FVError

    with pytest.raises(FVError, match=r"outside this model: it has \d+ layers"):
        run_runtime(fv_model, fixed_trials, tmp_path, RunConfig(edit_layers=[fv_model.info.n_layers + 3], max_trials=1))
    assert not any(tmp_path.iterdir()), "nothing may be written for a refused run"
