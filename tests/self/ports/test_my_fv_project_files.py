"""``UserFilesSide``: sunsikham/my_fv_project's artifacts folder read as a side, and compared with fv's runtime.

The fixture folder was written by their own pipeline on fv's tiny Llama (fixtures/ports/my_fv_project/README.md
gives the command and their commit): 3 trials of q Q1 of fixtures/relation_tiny.csv, 4 demos, every layer and
head, top 3 heads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fv.errors import FVError
from fv.model.loading import load_model
from fv.model.tiny import ensure_tiny_model
from fv.parity.run import run_parity
from fv.parity.sides import Side
from fv.parity.stages import Params
from fv.paths import FIXTURES
from fv.ports.my_fv_project_files import UserFilesSide, read_user_files, their_trials_as_fixed
from fv.runtime.trials import load_trials

# float32 logits computed with another thread count: relative rounding of a long float32 sum (seen: 1.1e-6 at 4.58)
LOGIT_ROUNDING = 1e-5
FOLDER = FIXTURES / "ports" / "my_fv_project" / "relation_tiny" / "Q1" / "artifacts"
CSV = FIXTURES / "relation_tiny.csv"
PARAMS = Params(n_top_heads=3, edit_layer=2, max_trials=None)
THEIR_TOP = [(0, 3), (3, 3), (2, 2)]  # top_heads.json of the fixture


@pytest.fixture(scope="module")
def lm():
    return load_model(str(ensure_tiny_model("tiny-llama")), "cpu", "float32")


@pytest.fixture(scope="module")
def trials(lm, tmp_path_factory):
    path = tmp_path_factory.mktemp("trials") / "their_trials.json"
    path.write_text(json.dumps(their_trials_as_fixed(FOLDER, lm.tokenizer, CSV)), encoding="utf-8")
    return load_trials(path)  # fv's only door for trials: the converted file passes its validation


def _data(trials) -> dict:
    return {"path": str(trials.path), "sha256": trials.sha256, "file": trials.raw}


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "artifacts"
    shutil.copytree(FOLDER, dst)
    return dst


# ---- (a) the reader ------------------------------------------------------------------------------------------
def test_reads_their_files_into_fv_stage_shapes(trials):
    side = UserFilesSide(FOLDER)
    assert isinstance(side, Side)
    assert [t.trial_idx for t in trials.trials] == [0, 1, 2] and {t.q_id for t in trials.trials} == {"Q1"}
    # fv's key "<trial_id>:<trial_idx>" of each compared trial -> their (q_id, trial_idx)
    assert side.trial_map(_data(trials), PARAMS.as_dict()) == [("0:0", ("Q1", 0)), ("1:1", ("Q1", 1)), ("2:2", ("Q1", 2))]
    d = side.describe(_data(trials), PARAMS.as_dict())
    assert d["kind"] == "my_fv_project files" and d["live"] is False and d["dtype"] is None  # they record no dtype
    notes = "\n".join(d["notes"])
    for stage in ("mean_activations", "prompt, slot", "injection"):
        assert f"not compared: {stage}" in notes
    assert "trial_metrics.jsonl delta_p" in notes and str(FOLDER) in notes
    got = side.stage_values(_data(trials), PARAMS.as_dict())
    v = got["values"]
    assert set(v) == {"indirect_effect", "top_heads", "fv"} and got["origin"] == "their files"
    ie = v["indirect_effect"]
    assert ie.shape == (3, 12, 4) and ie.dtype == torch.float32
    # cell (trial 1, layer 3, head 3) is their row's p_patch - p_base
    row = next(r for r in map(json.loads, (FOLDER / "trial_metrics.jsonl").read_text().splitlines())
               if (r["trial_idx"], r["layer"], r["head"]) == (1, 3, 3))
    assert ie[1, 3, 3].item() == pytest.approx(row["delta_p"], rel=1e-6, abs=0)
    assert [tuple(h[:2]) for h in v["top_heads"]] == THEIR_TOP
    assert all(h[2] == round(h[2], 4) for h in v["top_heads"])  # scored to 4 decimals, as the reference reports
    assert v["fv"].shape == (64,) and v["fv"].dtype == torch.float32
    assert side.query_slot_mean().shape == (12, 4, 16)


@pytest.mark.parametrize("name", ["sampled_trials.json", "trial_metrics.jsonl"])
def test_refuses_a_folder_missing_a_required_file(tmp_path, name):
    folder = _copy(tmp_path)
    (folder / name).unlink()
    with pytest.raises(FVError) as e:
        read_user_files(folder)
    msg = str(e.value)
    assert "\n" not in msg and f"missing {name}" in msg and str(folder) in msg


def test_leaves_out_what_does_not_map(tmp_path, trials):
    # n_top_heads larger than their k: neither top heads nor the FV can be compared
    side = UserFilesSide(FOLDER)
    p = Params(n_top_heads=5, edit_layer=2, max_trials=None).as_dict()
    assert set(side.stage_values(_data(trials), p)["values"]) == {"indirect_effect"}
    assert any("holds 3 heads (k), n_top_heads is 5" in n for n in side.describe(_data(trials), p)["notes"])
    # ranked by another score than the reference's
    folder = _copy(tmp_path)
    th = json.loads((folder / "top_heads.json").read_text())
    th["meta"]["score_key"] = "mean_delta_logprob"
    (folder / "top_heads.json").write_text(json.dumps(th))
    assert set(UserFilesSide(folder).stage_values(_data(trials), PARAMS.as_dict())["values"]) == {"indirect_effect"}
    # a sweep that skipped a layer: no indirect effect of the whole model
    rows = [ln for ln in (folder / "trial_metrics.jsonl").read_text().splitlines() if json.loads(ln)["layer"] != 11]
    (folder / "trial_metrics.jsonl").write_text("\n".join(rows) + "\n")
    side = UserFilesSide(folder)
    assert "indirect_effect" not in side.stage_values(_data(trials), PARAMS.as_dict())["values"]
    assert any(n.startswith("not compared: indirect_effect") for n in side.describe(_data(trials), PARAMS.as_dict())["notes"])


def test_refuses_trials_they_did_not_run(trials):
    data = _data(trials)
    other = json.loads(json.dumps(data["file"]))
    other["trials"][1]["corrupted_prompt_str"] += " "
    with pytest.raises(FVError, match="holds no trial with the prompts of trial 1:1"):
        UserFilesSide(FOLDER).describe({**data, "file": other}, PARAMS.as_dict())


# ---- (b) a real comparison with fv's runtime -----------------------------------------------------------------
def test_their_files_against_fv_runtime(lm, trials, tmp_path):
    """Their StepD/StepE files against fv's runtime (exact mode) on the same tiny Llama and the same 3 trials.

    Measured: the indirect effects agree within fp32 rounding but are not bit-identical (139 of 144 cells differ,
    max abs diff 4.4e-11 on effects up to 1.9e-5); the top-3 heads are the same; the FVs differ by at most 1.2e-7.
    The cause lies upstream of the effects: their clean mean at the query slot differs from fv's (the reference's)
    mean activations at the last slot by up to 1.2e-7 (a different order of the float32 sums)."""
    side = UserFilesSide(FOLDER)
    run = run_parity(lm, trials, PARAMS, None, tmp_path, other=side)
    st = {s.name: s for s in run.result.stages}
    report = json.loads((tmp_path / "parity_suite_report.json").read_text())
    assert report["status"] == "PASS" and [s["name"] for s in report["stages"]][3] == "indirect_effect"
    assert {n: s.status for n, s in st.items()} == {
        "prompt": "SKIP", "slot": "SKIP", "mean_activations": "SKIP", "indirect_effect": "PASS", "top_heads": "PASS",
        "fv": "PASS", "injection": "SKIP"}
    assert run.source == "my_fv_project files" and run.tolerance.name != "exact"  # files: not live, so not exact
    ie_theirs, ie_fv = run.src.values["indirect_effect"], run.fv.values["indirect_effect"]
    diff = (ie_theirs - ie_fv).abs()
    assert 0 < diff.max().item() < 1e-9  # fp32 rounding, not bit-exact
    assert diff.max().item() < 1e-4 * ie_fv.abs().max().item()
    assert [tuple(h[:2]) for h in run.fv.values["top_heads"]] == THEIR_TOP
    assert (run.src.values["fv"] - run.fv.values["fv"]).abs().max().item() < 1e-6
    # their Step6 at the same edit layer against the injection stage's zero-shot prompts (not a stage: see notes)
    zs = side.zero_shot_injection(_data(trials), PARAMS.as_dict())
    assert sorted(zs) == ["0:0", "1:1", "2:2"]
    with_diff = []
    for key, theirs in zs.items():
        ours = run.fv.values["injection"][key]["zero_shot"]
        assert theirs["target_id"] == ours["target_id"]
        # no FV: the same logits within float32 rounding (their Step6 ran with another thread count: sums differ in order)
        assert abs(theirs["base"]["logit"] - ours["base"]["logit"]) <= LOGIT_ROUNDING * max(1.0, abs(ours["base"]["logit"]))
        assert theirs["base"]["pred_id"] == ours["base"]["pred_id"] and theirs["with"]["pred_id"] == ours["with"]["pred_id"]
        with_diff.append(abs(theirs["with"]["logit"] - ours["with"]["logit"]))
    print("zero-shot with-FV logit diffs", with_diff)
    assert max(with_diff) < 1e-5  # their FV differs by <= 1.2e-7 (their running mean)
    # the query slot's mean: theirs against the stage's last slot
    q = side.query_slot_mean() - run.fv.values["mean_activations"][:, :, -1, :]
    assert 0 < q.abs().max().item() < 1e-5  # 1.2e-7 here; 3.1e-6 under ATEN_CPU_CAPABILITY=default


def test_a_changed_effect_is_named_by_stage_and_trial(lm, trials, tmp_path):
    """The gate can fail: one of their per-trial effects changed by 1e-6 (5% of the largest effect) is the first
    divergence, named by stage, trial key and (trial, layer, head)."""
    folder = _copy(tmp_path)
    rows = [json.loads(ln) for ln in (folder / "trial_metrics.jsonl").read_text().splitlines()]
    for r in rows:
        if (r["trial_idx"], r["layer"], r["head"]) == (1, 5, 2):
            r["p_patch"] += 1e-6
    (folder / "trial_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = run_parity(lm, trials, PARAMS, None, None, other=UserFilesSide(folder))
    assert run.result.earliest_failed_stage == "indirect_effect"
    ie = next(s for s in run.result.stages if s.name == "indirect_effect")
    assert ie.mismatch_count == 1 and ie.per_trial.get("1:1") == 1
    first = ie.mismatches[0]
    assert first.trial_key == "1:1" and first.key == "[1, 5, 2]"


def test_the_effects_differ_only_through_their_running_mean(lm, trials):
    """Why the effects are not bit-identical: their StepD averages the clean activations as a running mean
    (``mean + (x - mean) / (count + 1)``, their fv/mean_activations.py), the reference stacks the trials and takes
    ``mean``. Their query-slot mean differs from fv's last slot in 350 of 768 elements (max 1.2e-7); with theirs put
    in fv's last slot, fv's indirect effects equal theirs to the bit, in all 144 cells, and fv's FV of their heads
    equals their fv_global_resid.pt to the bit; fv's injection of that FV at layer 2 on the zero-shot prompts gives
    their Step6 logits (without and with the FV) within float32 rounding (a logit is a long float32 sum whose order
    follows the thread count: bit-equal on the machine and threads that wrote the files, ~1e-6 apart elsewhere)."""
    from fv.parity.stages import fv_dummy_labels
    from fv.runtime.activations import mean_head_activations
    from fv.runtime.effects import indirect_effects, pad_token_id
    from fv.runtime.prepared import prepare_trials
    from fv.runtime.vectors import function_vector

    side = UserFilesSide(FOLDER)
    theirs = side.stage_values(_data(trials), PARAMS.as_dict())["values"]
    info = lm.info
    dummy = fv_dummy_labels(lm, trials.trials, None, None)
    prep = prepare_trials(lm.tokenizer, trials.trials, dummy, lm.prepend_bos, info.device)
    mean = mean_head_activations(lm.model, info, [pt.clean for pt in prep], len(dummy), mode="exact")
    assert side.files.slot_q == mean.shape[2] - 1  # their query slot is the last slot
    q = side.query_slot_mean()
    assert (q != mean[:, :, -1, :]).sum().item() > 0
    swapped = mean.clone()
    swapped[:, :, -1, :] = q
    ie = indirect_effects(lm.model, info, [pt.corrupted for pt in prep], swapped, pad_token_id(lm.tokenizer), mode="exact")
    # bit-equal where their files were written (this CPU class and thread count); within float32 rounding elsewhere
    # (8.4e-11 under ATEN_CPU_CAPABILITY=default, on effects up to 1.9e-5)
    assert (ie - theirs["indirect_effect"]).abs().max().item() <= 1e-9
    vec = function_vector(swapped, [tuple(h) for h in theirs["top_heads"]], info).vector.reshape(-1).float()
    assert (vec - theirs["fv"]).abs().max().item() <= LOGIT_ROUNDING * max(1.0, theirs["fv"].abs().max().item())
    # and fv's injection of their FV at layer 2 gives their Step6 logits on the zero-shot prompts to the bit
    from fv.runtime.injection import intervene

    zs = side.zero_shot_injection(_data(trials), PARAMS.as_dict())
    for pt in prep:
        p = pt.prompt_set("zero_shot")
        with torch.inference_mode():
            clean, edited = intervene(lm.model, info, p.inputs, PARAMS.edit_layer, theirs["fv"])
        for got, want in ((clean[0, p.target_id].item(), zs[pt.key]["base"]["logit"]),
                          (edited[0, p.target_id].item(), zs[pt.key]["with"]["logit"])):
            assert abs(got - want) <= LOGIT_ROUNDING * max(1.0, abs(want))
