"""``--layout my_fv_project``: fv's run written in sunsikham/my_fv_project's layout, read back by the reader of that
layout (``UserFilesSide``) and by the rules their own loaders follow (``load_stepd_scores_csv``, ``select_topk``,
``build_step6_all_layers_summary`` at commit 9290bc50: the columns, keys and order they read).

One relation q (Q1 of fixtures/relation_tiny.csv, 3 trials, 4 demos, edit layers 2 and 3, top 3 heads) on the tiny
Llama, run by ``fv relation run`` in-process as a user types it.
"""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from pathlib import Path

import pytest
import torch

from fv.io import load_tensor_file, read_json
from fv.parity.run import run_parity
from fv.parity.sides import GivenSide
from fv.parity.stages import Params, StageValues
from fv.paths import FIXTURES
from fv.ports.my_fv_project_files import UserFilesSide
from fv.ports.my_fv_project_layout import LEFT_OUT, SUMMARY_KEYS
from fv.runtime.trials import load_trials
from tests.support.cli import run_cli

pytestmark = [pytest.mark.m7, pytest.mark.tiny]
PARAMS = Params(n_top_heads=3, edit_layer=2, max_trials=None)


@pytest.fixture(scope="module")
def lm():
    from fv.model.loading import load_model

    return load_model("tiny-llama", "cpu", "float32")


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """The q folder of ``fv relation run ... --layout my_fv_project``."""
    out = tmp_path_factory.mktemp("layout")
    rc, stdout, err = run_cli(["relation", "run", "--relation-csv", str(FIXTURES / "relation_tiny.csv"), "--model", "tiny-llama",
                               "--out", str(out), "--q-list", "Q1", "--n-trials-per-q", "3", "--n-demos", "4", "--topk", "3",
                               "--edit-layers", "2,3", "--no-plots", "--quiet", "--layout", "my_fv_project"])
    assert rc == 0, stdout + err
    return out / "relation_tiny" / "Q1"


def _trials(q: Path):
    return load_trials(next(q.glob("fixed_trials_*.json")))


def _fv_values(q: Path) -> StageValues:
    return StageValues(values={"indirect_effect": load_tensor_file(q / "indirect_effect.pt"),
                               "top_heads": read_json(q / "top_heads.json"), "fv": load_tensor_file(q / "fv_global_resid.pt")})


def test_their_layout_read_back_equals_fvs_numbers(lm, written, tmp_path):
    """The reader of their layout, on what fv wrote: the indirect effects, the top heads and the FV equal fv's own
    files, bit for bit (the gate PASSes with zero mismatches)."""
    art = written / "artifacts"
    trials = _trials(written)
    side = UserFilesSide(art)
    data = {"path": str(trials.path), "sha256": trials.sha256, "file": trials.raw}
    got = side.stage_values(data, PARAMS.as_dict())["values"]
    mine = _fv_values(written)
    assert torch.equal(got["indirect_effect"], mine.values["indirect_effect"].float())
    assert got["top_heads"] == [[int(l), int(h), float(s)] for l, h, s in mine.values["top_heads"]]
    assert torch.equal(got["fv"], mine.values["fv"].float().reshape(-1))
    run = run_parity(lm, trials, PARAMS, None, tmp_path, other=side, ours=GivenSide(mine))
    compared = [s for s in run.result.stages if s.status != "SKIP"]
    assert [s.name for s in compared] == ["indirect_effect", "top_heads", "fv"]
    assert all(s.status == "PASS" and s.mismatch_count == 0 and s.max_abs_diff == 0.0 for s in compared), \
        [(s.name, s.status, s.max_abs_diff) for s in compared]
    # their query-slot mean is fv's last slot
    assert torch.equal(side.query_slot_mean(), load_tensor_file(written / "mean_activations.pt").float()[:, :, -1, :])


def test_their_loaders_read_the_scores_and_rank_fvs_heads(written):
    """``aie_scores.csv`` has the ``mean_delta_p`` column their ``load_stepd_scores_csv`` demands, equal to fv's
    trial-mean indirect effect per head; their ``select_topk`` (by -score, layer, head) picks fv's top heads, and
    ``top_heads.json`` is their dict form."""
    art = written / "artifacts"
    ie = load_tensor_file(written / "indirect_effect.pt")
    with (art / "aie_scores.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {"layer", "head", "mean_delta_p"} <= set(rows[0])
    assert len(rows) == ie.shape[1] * ie.shape[2]
    for r in rows:
        col = [float(x) for x in ie[:, int(r["layer"]), int(r["head"])].tolist()]
        assert float(r["mean_delta_p"]) == statistics.fmean(col)
    top = sorted(rows, key=lambda r: (-float(r["mean_delta_p"]), int(r["layer"]), int(r["head"])))[:3]
    fv_top = read_json(written / "top_heads.json")
    assert [(int(r["layer"]), int(r["head"])) for r in top] == [(l, h) for l, h, _ in fv_top]
    th = read_json(art / "top_heads.json")
    assert th["meta"]["score_key"] == "mean_delta_p" and th["meta"]["k"] == 3
    assert [(h["layer"], h["head"]) for h in th["heads"]] == [(l, h) for l, h, _ in fv_top]
    assert all(h["rank_score"] == h["mean_delta_p"] and round(h["rank_score"], 4) == s
               for h, (_l, _h, s) in zip(th["heads"], fv_top))


def test_step6_is_zero_shot_in_their_keys(written):
    """Per edit layer, ``eval_summary.json`` holds exactly their keys with fv's **zero-shot** figures (never a pool
    of zero-shot and shuffled prompts); ``eval_trials.jsonl`` its zero-shot rows; the all-layers summary names the
    layer with the largest zero-shot ``mean_delta_p``, as their pipeline picks it."""
    art = written / "artifacts"
    scores = {}
    for layer in (2, 3):
        fv_summary = read_json(written / f"layer_{layer}" / "step6_results.json")["summary"]
        assert "mean_delta_p" not in fv_summary  # fv's own summary pools nothing either
        zs = fv_summary["by_prompt_set"]["zero_shot"]
        theirs = read_json(art / "step6" / f"layer_{layer}" / "eval_summary.json")
        assert tuple(theirs) == SUMMARY_KEYS and all(theirs[k] == zs[k] for k in SUMMARY_KEYS)
        rows = [json.loads(ln) for ln in (art / "step6" / f"layer_{layer}" / "eval_trials.jsonl").read_text().splitlines()]
        assert len(rows) == zs["n"] == 3 and all(r["prompt"].startswith("Q: ") for r in rows)
        assert statistics.fmean(r["delta_p"] for r in rows) == pytest.approx(zs["mean_delta_p"], rel=1e-12)
        assert len(list((art / "step6" / f"layer_{layer}").glob("step6_results_*.json"))) == 1
        scores[layer] = zs["mean_delta_p"]
    allsum = read_json(art / "step6" / "step6_all_layers_summary.json")
    assert allsum["best_layer"] == max(scores, key=lambda L: (scores[L], -L)) and allsum["completed_layers"] == [2, 3]
    status = read_json(art / "qid_status.json")
    assert status["status"] == "completed" and status["q_id"] == "Q1"
    left = read_json(art / "fv_layout.json")["left_out"]
    assert left == LEFT_OUT and "p_base" in left["trial_metrics.jsonl"]


def test_a_changed_value_in_the_written_layout_fails_at_that_head(lm, written, tmp_path):
    """The read-back can fail: one effect changed in the written ``trial_metrics.jsonl`` is named by stage, trial
    and (trial, layer, head)."""
    art = tmp_path / "artifacts"
    shutil.copytree(written / "artifacts", art)
    rows = [json.loads(ln) for ln in (art / "trial_metrics.jsonl").read_text().splitlines()]
    for r in rows:
        if (r["trial_idx"], r["layer"], r["head"]) == (2, 4, 1):
            r["delta_p"] += 1e-6
    (art / "trial_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    trials = _trials(written)
    run = run_parity(lm, trials, PARAMS, None, None, other=UserFilesSide(art), ours=GivenSide(_fv_values(written)))
    assert run.result.earliest_failed_stage == "indirect_effect"
    ie = next(s for s in run.result.stages if s.name == "indirect_effect")
    assert ie.mismatch_count == 1 and ie.mismatches[0].key == "[2, 4, 1]"


def test_runtime_run_writes_the_layout_too(tmp_path):
    """``fv runtime run --layout my_fv_project`` on the embedded antonym trials (no q: the trials id stands for it)
    writes the same files, read back equal to fv's."""
    out = tmp_path / "run"
    rc, stdout, err = run_cli(["runtime", "run", "--model", "tiny-llama", "--out", str(out), "--max-trials", "2",
                               "--edit-layer", "2", "--n-top-heads", "3", "--no-plots", "--quiet", "--layout", "my_fv_project"])
    assert rc == 0, stdout + err
    trials = load_trials(next(out.glob("fixed_trials_*.json")))
    side = UserFilesSide(out / "artifacts")
    params = Params(n_top_heads=3, edit_layer=2, max_trials=2)
    got = side.stage_values({"path": str(trials.path), "sha256": trials.sha256, "file": trials.raw}, params.as_dict())["values"]
    assert torch.equal(got["indirect_effect"], load_tensor_file(out / "indirect_effect.pt").float())
    assert (out / "artifacts" / "step6" / "layer_2" / "eval_summary.json").is_file()


def test_layout_with_no_wait_is_refused_in_one_line(tmp_path):
    from tests.support.cli import assert_one_line_failure

    rc, _out, err = run_cli(["relation", "run", "--relation-csv", str(FIXTURES / "relation_tiny.csv"), "--model", "tiny-llama",
                             "--out", str(tmp_path), "--executor", "local", "--no-wait", "--layout", "my_fv_project"])
    assert_one_line_failure(rc, err, "--layout my_fv_project", "--no-wait")


def test_parity_diff_reads_their_top_heads_and_fv_files(written, tmp_path):
    """``fv parity diff`` takes their ``top_heads.json`` (records with ``rank_score``) and their ``fv_global_resid.pt``
    (a dict holding the vector): against fv's own folder both stages PASS, the stages their folder lacks are named
    missing, and a reordered head list FAILs at that rank."""
    import json as _json

    rc, out, err = run_cli(["parity", "diff", "--src", str(written / "artifacts"), "--fv", str(written), "--out",
                            str(tmp_path / "diff"), "--no-plots"])
    assert rc in (0, 1) and "Traceback" not in err, err
    stages = {s["stage"]: s for s in _json.loads((tmp_path / "diff" / "src_vs_fv_diff_report.json").read_text())["stages"]}
    assert stages["top_heads"]["status"] == "PASS" and stages["fv"]["status"] == "PASS", stages
    assert stages["indirect_effect"]["status"] == "MISSING"
    theirs = tmp_path / "theirs"
    shutil.copytree(written / "artifacts", theirs)
    th = read_json(theirs / "top_heads.json")
    th["heads"][0], th["heads"][1] = th["heads"][1], th["heads"][0]
    (theirs / "top_heads.json").write_text(_json.dumps(th))
    rc, out, err = run_cli(["parity", "diff", "--src", str(theirs), "--fv", str(written), "--out", str(tmp_path / "diff2"),
                            "--no-plots"])
    report = _json.loads((tmp_path / "diff2" / "src_vs_fv_diff_report.json").read_text())
    heads = next(s for s in report["stages"] if s["stage"] == "top_heads")
    assert rc == 1 and heads["status"] == "FAIL" and heads["first"]["key"] == "[0]", heads
