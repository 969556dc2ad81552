"""``fv.ports.my_fv_project_stepd``: sunsikham/my_fv_project's StepD folder of a fixed-trials run read as a side, and
compared with fv's runtime.

The fixture folder was written by their own scripts on fv's tiny Llama (fixtures/ports/my_fv_project/stepd_fixed/
README.md gives the commands and their commit): fv's fixed-trials file of 3 antonym trials with 4 shots, every layer
and head, top 3 heads. Their StepE stops on that folder before the FV (it wants a 3-D mean); ``stepE_bridged/`` holds
what it writes when handed the query slot's mean as their relation mode writes it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fv.errors import FVError
from fv.io import save_tensors, write_json
from fv.model.loading import load_model
from fv.model.tiny import ensure_tiny_model
from fv.parity.run import run_parity
from fv.parity.sides import Side
from fv.parity.stages import Params, fv_dummy_labels
from fv.parity.tensor_diff import allclose
from fv.parity.tolerance import FP32
from fv.paths import FIXTURES
from fv.ports import my_fv_project_stepd as stepd
from fv.ports.my_fv_project_stepd import StepDFilesSide, fixed_trials, looks_like, read_stepd_files
from fv.runtime.trials import load_trials, validate_trials

ROOT = FIXTURES / "ports" / "my_fv_project" / "stepd_fixed"
FOLDER = ROOT / "artifacts"
BRIDGED = ROOT / "stepE_bridged"
RELATION = FIXTURES / "ports" / "my_fv_project" / "relation_tiny" / "Q1" / "artifacts"
TRIALS_FILE = ROOT / "antonym_tiny_t3s4.json"
PARAMS = Params(n_top_heads=3, edit_layer=2, max_trials=None)
THEIR_TOP = [(11, 2), (2, 3), (3, 1)]  # top_heads.json of the fixture
WORD_SLOTS = [3, 7, 12, 16, 21, 25, 30, 34, 39]  # the slots of the 4 demonstrations' words and labels and the query word


@pytest.fixture(scope="module")
def lm():
    return load_model(str(ensure_tiny_model("tiny-llama")), "cpu", "float32")


@pytest.fixture(scope="module")
def trials(lm, tmp_path_factory):
    path = tmp_path_factory.mktemp("trials") / "their_trials.json"
    path.write_text(json.dumps(fixed_trials(FOLDER, lm.tokenizer)), encoding="utf-8")
    return load_trials(path)  # fv's only door for trials: the file passes its validation


@pytest.fixture(scope="module")
def run(lm, trials, tmp_path_factory):
    """Their folder against fv's runtime (exact mode), once for the module; later runs reuse fv's values."""
    return run_parity(lm, trials, PARAMS, None, tmp_path_factory.mktemp("report"), other=StepDFilesSide(FOLDER))


def _data(trials) -> dict:
    return {"path": str(trials.path), "sha256": trials.sha256, "file": trials.raw}


def _copy(tmp_path: Path, with_fv: bool = False) -> Path:
    """A copy of the run folder (``<fixed_out_dir>/artifacts`` with ``logs/``), the recorded trials path made
    unreachable so only the copy beside it can be found; with StepE's bridged FV files when ``with_fv``."""
    base = tmp_path / "run"
    shutil.copytree(FOLDER, base / "artifacts")
    shutil.copytree(ROOT / "logs", base / "logs")
    shutil.copy(TRIALS_FILE, base / TRIALS_FILE.name)
    st = json.loads((base / "artifacts" / "sampled_trials.json").read_text())
    st["meta"]["fixed_trials_path"] = f"/nonexistent/{TRIALS_FILE.name}"
    (base / "artifacts" / "sampled_trials.json").write_text(json.dumps(st))
    if with_fv:
        for name in ("top_heads.json", "fv_global_resid.pt", "fv_global_resid_meta.json"):
            shutil.copy(BRIDGED / name, base / "artifacts" / name)
    return base / "artifacts"


# ---- (a) the reader ------------------------------------------------------------------------------------------
def test_reads_their_files_into_fv_stage_shapes(lm, trials):
    side = StepDFilesSide(FOLDER)
    assert isinstance(side, Side) and isinstance(stepd.side(FOLDER), StepDFilesSide)
    assert stepd.NAME == "my_fv_project-stepd" and "\n" not in stepd.DESCRIPTION
    assert side.trial_map(_data(trials), PARAMS.as_dict()) == [("0:0", 0), ("1:1", 1), ("2:2", 2)]
    d = side.describe(_data(trials), PARAMS.as_dict())
    assert d["kind"] == "my_fv_project StepD files" and d["live"] is False and d["dtype"] == "float32"  # their log
    notes = "\n".join(d["notes"])
    for stage in ("fv", "prompt, slot", "injection"):
        assert f"not compared: {stage}:" in notes
    assert "before building it" in notes and str(FOLDER) in notes
    got = side.stage_values(_data(trials), PARAMS.as_dict())
    v = got["values"]
    assert set(v) == {"mean_activations", "indirect_effect", "top_heads"} and got["origin"] == "their files"
    mean = v["mean_activations"]
    assert mean.shape == (12, 4, 43, 16) and mean.dtype == torch.float32
    assert torch.equal(mean, torch.load(FOLDER / "mean_activations.pt", weights_only=True))
    # their slots are fv's dummy labels, in order, the query's predictive token last
    assert side.slot_labels() == [label for _p, label in fv_dummy_labels(lm, trials.trials, None, None)]
    ie = v["indirect_effect"]
    assert ie.shape == (3, 12, 4) and ie.dtype == torch.float32
    row = next(r for r in map(json.loads, (FOLDER / "trial_metrics.jsonl").read_text().splitlines())
               if (r["trial_idx"], r["layer"], r["head"]) == (1, 3, 3))
    assert ie[1, 3, 3].item() == pytest.approx(row["delta_p"], rel=1e-6, abs=0)
    assert [tuple(h[:2]) for h in v["top_heads"]] == THEIR_TOP
    assert all(h[2] == round(h[2], 4) for h in v["top_heads"])  # scored to 4 decimals, as the reference reports


def test_the_trials_they_ran(lm, trials):
    """The first n_trials of the file their StepD recorded (found by its name beside the folder), checked against
    their snapshot; the dict passes fv's validation."""
    raw = fixed_trials(FOLDER, lm.tokenizer)
    validate_trials(raw, "test")
    given = json.loads(TRIALS_FILE.read_text())
    assert raw["trials"] == given["trials"][:3] and raw["meta"]["n_shots"] == 4
    theirs = json.loads((FOLDER / "sampled_trials.json").read_text())["trials"]
    assert [t.clean_prompt_str for t in trials.trials] == [t["clean_prompt_str"] for t in theirs]


def test_looks_like_their_fixed_trials_folder_only(tmp_path, run):
    assert looks_like(FOLDER)
    assert not looks_like(ROOT)  # <fixed_out_dir>: the run folder is its artifacts/
    assert not looks_like(RELATION)  # their relation q folder (the my_fv_project layout)
    assert not looks_like(BRIDGED)  # StepE's files alone
    # fv's own run folder: the files fv.pipelines.run writes there, from fv's values
    fv_run = tmp_path / "fv_run"
    save_tensors(fv_run / "mean_activations.pt", run.fv.values["mean_activations"])
    save_tensors(fv_run / "indirect_effect.pt", run.fv.values["indirect_effect"])
    save_tensors(fv_run / "fv_global_resid.pt", run.fv.values["fv"])
    write_json(fv_run / "top_heads.json", run.fv.values["top_heads"])
    for name in ("mean_activations_meta.json", "indirect_effect_meta.json"):
        write_json(fv_run / name, {"fixed_trials_path": str(TRIALS_FILE), "dummy_labels": []})
    assert not looks_like(fv_run)
    # a folder in their layout that fv wrote (--layout my_fv_project) names another source
    folder = _copy(tmp_path)
    assert looks_like(folder)
    st = json.loads((folder / "sampled_trials.json").read_text())
    st["meta"]["source"] = "fv"
    (folder / "sampled_trials.json").write_text(json.dumps(st))
    assert not looks_like(folder)


@pytest.mark.parametrize("name", stepd.REQUIRED)
def test_refuses_a_folder_missing_a_required_file(tmp_path, name):
    folder = _copy(tmp_path)
    (folder / name).unlink()
    with pytest.raises(FVError) as e:
        read_stepd_files(folder)
    msg = str(e.value)
    assert "\n" not in msg and f"missing {name}" in msg and str(folder) in msg


def test_refusals_are_one_line(lm, tmp_path, trials):
    def refused(fn, *args) -> str:
        with pytest.raises(FVError) as e:
            fn(*args)
        assert "\n" not in str(e.value), str(e.value)
        return str(e.value)

    folder = _copy(tmp_path)
    torch.save(torch.zeros(12, 4, 16), folder / "mean_activations.pt")
    assert "expected a (layers, heads, slots, head_dim) tensor, found (12, 4, 16)" in refused(read_stepd_files, folder)
    # the trials file their StepD read is gone: where to put it
    folder = _copy(tmp_path / "b")
    (folder.parent / TRIALS_FILE.name).unlink()
    msg = refused(fixed_trials, folder, lm.tokenizer)
    assert "/nonexistent/antonym_tiny_t3s4.json" in msg and f"copy the file they ran into {folder.parent}" in msg
    # a file of that name that is not the one they read
    other = json.loads(TRIALS_FILE.read_text())
    other["trials"][1], other["trials"][2] = other["trials"][2], other["trials"][1]
    (folder.parent / TRIALS_FILE.name).write_text(json.dumps(other))
    assert "trials[trial_idx=1].clean_prompt_str" in refused(fixed_trials, folder, lm.tokenizer)
    # trials they did not run, and a subset of theirs: their values average all of them
    data = _data(trials)
    changed = json.loads(json.dumps(data["file"]))
    changed["trials"][1]["corrupted_prompt_str"] += " "
    side = StepDFilesSide(FOLDER)
    assert "holds no trial with the prompts of trial 1:1" in refused(side.describe, {**data, "file": changed}, PARAMS.as_dict())
    two = Params(n_top_heads=3, edit_layer=2, max_trials=2).as_dict()
    assert "2 trials compared, their StepD averaged all 3" in refused(side.describe, data, two)


def test_refuses_a_relation_q_folder(tmp_path):
    # their relation run's sampled_trials.json beside a fixed-trials run's other files: not this layout's source
    folder = _copy(tmp_path)
    shutil.copy(RELATION / "sampled_trials.json", folder / "sampled_trials.json")
    with pytest.raises(FVError, match=r"meta.source is 'relation_csv', not 'fixed_trials_override'") as e:
        read_stepd_files(folder)
    assert "\n" not in str(e.value)


def test_leaves_out_what_does_not_map(tmp_path, trials):
    side = StepDFilesSide(FOLDER)
    # n_top_heads larger than their k
    p = Params(n_top_heads=5, edit_layer=2, max_trials=None).as_dict()
    assert set(side.stage_values(_data(trials), p)["values"]) == {"mean_activations", "indirect_effect"}
    assert any("holds 3 heads (k), n_top_heads is 5" in n for n in side.describe(_data(trials), p)["notes"])
    # a mean over fewer trials than were swept (--n_mean_trials)
    folder = _copy(tmp_path)
    mm = json.loads((folder / "mean_activations_meta.json").read_text())
    (folder / "mean_activations_meta.json").write_text(json.dumps({**mm, "n_mean_trials": 2}))
    side = StepDFilesSide(folder)
    assert side.stage_values(_data(trials), PARAMS.as_dict())["values"] == {}
    assert any("first 2 trials (--n_mean_trials)" in n for n in side.describe(_data(trials), PARAMS.as_dict())["notes"])
    # a sweep of some layers (--layers 0-10): the mean of layer 11 is zeros, its effects are missing
    (folder / "mean_activations_meta.json").write_text(json.dumps({**mm, "layers": list(range(11))}))
    rows = [ln for ln in (folder / "trial_metrics.jsonl").read_text().splitlines() if json.loads(ln)["layer"] != 11]
    (folder / "trial_metrics.jsonl").write_text("\n".join(rows) + "\n")
    side = StepDFilesSide(folder)
    assert side.stage_values(_data(trials), PARAMS.as_dict())["values"] == {}
    notes = "\n".join(side.describe(_data(trials), PARAMS.as_dict())["notes"])
    assert "not compared: mean_activations: their StepD hooked layers" in notes
    assert "not compared: indirect_effect, top_heads, fv: trial_metrics.jsonl lacks 12" in notes
    # StepE's heads ranked over a layer subset are not the top of this folder's scores
    folder = _copy(tmp_path / "b")
    th = json.loads((folder / "top_heads.json").read_text())
    th["heads"] = th["heads"][1:] + th["heads"][:1]
    (folder / "top_heads.json").write_text(json.dumps(th))
    side = StepDFilesSide(folder)
    assert "top_heads" not in side.stage_values(_data(trials), PARAMS.as_dict())["values"]


# ---- (b) a real comparison with fv's runtime -----------------------------------------------------------------
def test_their_folder_against_fv_runtime(run):
    """Their StepD/StepE files against fv's runtime (exact mode) on the same tiny Llama and the same 3 trials.

    Measured: the indirect effects agree within fp32 rounding (max abs diff 4.6e-10 on effects up to 5.4e-5), the
    top-3 heads are the same; the mean activations FAIL, in the 9 slots of the words (demonstrations, labels, query)
    only, by up to 1.06: their mean_activations.pt puts the *first* token of a word of several tokens in its slot
    where the reference averages the word's tokens (test_their_mean_is_the_first_token_of_each_word). Elsewhere
    the means agree within fp32 rounding (their running mean)."""
    st = {s.name: s for s in run.result.stages}
    assert {n: s.status for n, s in st.items()} == {
        "prompt": "SKIP", "slot": "SKIP", "mean_activations": "FAIL", "indirect_effect": "PASS", "top_heads": "PASS",
        "fv": "SKIP", "injection": "SKIP"}
    assert run.result.status == "FAIL" and run.result.earliest_failed_stage == "mean_activations"
    assert run.source == "my_fv_project StepD files" and run.tolerance.name == "fp32"  # files: not live, so not exact
    ma = st["mean_activations"]
    assert f"9 of 43 slots ({', '.join(map(str, WORD_SLOTS))})" in ma.pattern
    assert 1.0 < ma.max_abs_diff < 1.1
    theirs, ours = run.src.values["mean_activations"], run.fv.values["mean_activations"]
    others = [s for s in range(43) if s not in WORD_SLOTS]
    # within fp32 rounding: 2.4e-7 where their files were written (native kernels), 5.6e-6 under the portable ones
    assert allclose(FP32, ours[:, :, others], theirs[:, :, others])
    diff = (run.src.values["indirect_effect"] - run.fv.values["indirect_effect"]).abs()
    assert 0 < diff.max().item() < 1e-9  # fp32 rounding, not bit-exact
    assert [tuple(h[:2]) for h in run.fv.values["top_heads"]] == THEIR_TOP


def test_their_mean_is_the_first_token_of_each_word(lm, trials):
    """Why their mean activations part from the reference's: per trial they take each slot's activation at the
    word's first token (``apply_paper_idx_map_to_slots`` over ``idx_map``; ``idx_avg`` unused) and keep a running
    mean. Computed so from fv's own captured activations, it equals their mean_activations.pt to the bit."""
    from fv.runtime.hooks import capture_inputs
    from fv.runtime.prepared import prepare_trials

    info = lm.info
    dummy = fv_dummy_labels(lm, trials.trials, None, None)
    prep = prepare_trials(lm.tokenizer, trials.trials, dummy, lm.prepend_bos, info.device)
    spans = sorted({pt.clean.idx_map[i] for pt in prep for i, _j in pt.clean.idx_avg.values()})
    assert spans == WORD_SLOTS  # the slots of words of several tokens, in some trial
    mean = torch.zeros(info.n_layers, info.n_heads, len(dummy), info.head_dim)
    for n, pt in enumerate(prep):
        with torch.inference_mode(), capture_inputs(info.attn_out) as cap:
            lm.model(**pt.clean.inputs)
        stack = torch.vstack([cap[i].view(*cap[i].shape[:-1], info.n_heads, info.head_dim)
                              for i in range(info.n_layers)]).permute(0, 2, 1, 3)
        mean = mean + (stack[:, :, list(pt.clean.idx_map.keys())] - mean) / (n + 1)
    theirs = torch.load(FOLDER / "mean_activations.pt", weights_only=True)
    # bit-equal where their files were written (this CPU class and thread count); within fp32 rounding elsewhere
    # (5.6e-6 under torch's portable kernels): the suite's named fp32 tolerance
    assert allclose(FP32, mean, theirs)


def test_their_bridged_fv_against_fv_runtime(run, trials, tmp_path):
    """StepE's FV (built when handed the query slot's mean, stepE_bridged/) beside the folder: the fv stage is
    compared and PASSes (max abs diff 1.2e-7: their running mean at the query slot)."""
    side = StepDFilesSide(_copy(tmp_path, with_fv=True))
    assert set(side.stage_values(_data(trials), PARAMS.as_dict())["values"]) == {
        "mean_activations", "indirect_effect", "top_heads", "fv"}
    again = run_parity(run.lm, trials, PARAMS, None, None, other=side, fv_values=run.fv)
    st = {s.name: s for s in again.result.stages}
    assert st["fv"].status == "PASS" and st["top_heads"].status == "PASS" and st["indirect_effect"].status == "PASS"
    assert 0 < st["fv"].max_abs_diff < 1e-6
    # with n_top_heads 2 their FV (of 3 heads) is not the stage's
    p = Params(n_top_heads=2, edit_layer=2, max_trials=None).as_dict()
    assert "fv" not in side.stage_values(_data(trials), p)["values"]
    assert any("sums their top 3 heads, n_top_heads is 2" in n for n in side.describe(_data(trials), p)["notes"])


def test_a_changed_value_is_named(run, trials, tmp_path):
    """The gate names what was changed: one of their per-trial effects (p_patch of trial 1, layer 5, head 2, by
    1e-6) by stage, trial and (trial, layer, head); one element of their mean at the query slot (layer 4, head 1,
    slot 42) by its slot, beside the word slots that differ already."""
    folder = _copy(tmp_path)
    rows = [json.loads(ln) for ln in (folder / "trial_metrics.jsonl").read_text().splitlines()]
    for r in rows:
        if (r["trial_idx"], r["layer"], r["head"]) == (1, 5, 2):
            r["p_patch"] += 1e-6
    (folder / "trial_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    mean = torch.load(folder / "mean_activations.pt", weights_only=True)
    mean[4, 1, 42, 0] += 0.01
    torch.save(mean, folder / "mean_activations.pt")
    changed = run_parity(run.lm, trials, PARAMS, None, None, other=StepDFilesSide(folder), fv_values=run.fv)
    ie = next(s for s in changed.result.stages if s.name == "indirect_effect")
    assert ie.status == "FAIL" and ie.mismatch_count == 1 and ie.per_trial.get("1:1") == 1
    assert ie.mismatches[0].trial_key == "1:1" and ie.mismatches[0].key == "[1, 5, 2]"
    ma = next(s for s in changed.result.stages if s.name == "mean_activations")
    before = next(s for s in run.result.stages if s.name == "mean_activations")
    assert ma.mismatch_count == before.mismatch_count + 1
    assert f"10 of 43 slots ({', '.join(map(str, WORD_SLOTS + [42]))})" in ma.pattern
