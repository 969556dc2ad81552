"""``fv universal`` end to end on the tiny model: every file, the AIE and heads from the files, resume by each
task's own identity, the one-line refusals, and the job-array executor writing the same numbers."""

from __future__ import annotations

import pytest
import torch

from fv.cli import main
from fv.io import load_tensor_file, read_json
from fv.paths import FIXTURES

pytestmark = pytest.mark.universal
DATASETS = f"{FIXTURES / 'antonym_tiny.json'},{FIXTURES / 'data' / 'capitalize.json'}"
ARGS = ["--model", "tiny-llama", "--datasets", DATASETS, "--n-trials", "2", "--max-trials", "1", "--n-top-heads", "5",
        "--edit-layers", "8-9", "--cpu-threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("universal") / "u"
    assert main(["universal", *ARGS, "--task-filter", "all", "--out", str(out)]) == 0
    return out


def test_writes_every_file(run_dir):
    for f in ("aie_by_task.pt", "tasks.json", "aie.pt", "universal_top_heads.json", "universal_meta.json"):
        assert (run_dir / f).is_file(), f
    tasks = read_json(run_dir / "tasks.json")["tasks"]
    assert [t["name"] for t in tasks] == ["antonym_tiny", "capitalize"]
    assert set(tasks[0]) >= {"name", "trials_sha256", "icl_accuracy", "majority_baseline", "kept", "reason"}
    for t in tasks:
        d = run_dir / t["name"]
        assert tuple(load_tensor_file(d / "fv_universal.pt").shape) == (64,)
        ev = read_json(d / "universal_eval.json")
        assert ev["edit_layers"] == [8, 9] and set(ev["by_layer"]) == {"8", "9"}
    by_task, aie = load_tensor_file(run_dir / "aie_by_task.pt"), load_tensor_file(run_dir / "aie.pt")
    assert tuple(by_task.shape) == (2, 12, 4) and torch.equal(aie, by_task.mean(0))
    vals, idx = torch.topk(aie.reshape(-1), 5)
    assert [(l, h) for l, h, _ in read_json(run_dir / "universal_top_heads.json")] == [(int(i) // 4, int(i) % 4) for i in idx]
    pytest.importorskip("matplotlib")
    assert (run_dir / "aie_heatmap.png").is_file() and (run_dir / "universal_fv_accuracy_by_layer.png").is_file()


def test_resume_reuses_each_task_and_the_filter_refuses_in_one_line(run_dir, capsys):
    before = {t: (run_dir / t / "indirect_effect.pt").stat().st_mtime_ns for t in ("antonym_tiny", "capitalize")}
    rc = main(["universal", *ARGS, "--out", str(run_dir)])  # default filter: the random model beats no baseline
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "--task-filter all" in err and "no task is kept" in err
    assert {t: (run_dir / t / "indirect_effect.pt").stat().st_mtime_ns for t in before} == before


def test_exactly_one_source(tmp_path, capsys):
    rc = main(["universal", "--model", "tiny-llama", "--datasets", DATASETS, "--relation-csv", str(FIXTURES / "relation_tiny.csv"),
               "--out", str(tmp_path / "x")])
    assert rc == 2 and "exactly one task source" in capsys.readouterr().err  # a usage error


@pytest.mark.slow
def test_local_executor_writes_the_same_numbers(run_dir, tmp_path):
    pytest.importorskip("submitit")
    out = tmp_path / "u"
    assert main(["universal", *ARGS, "--task-filter", "all", "--out", str(out), "--executor", "local", "--no-plots",
                 "--tasks-per-task", "2"]) == 0
    for f in ("aie_by_task.pt", "aie.pt", "antonym_tiny/fv_universal.pt", "capitalize/indirect_effect.pt"):
        assert torch.equal(load_tensor_file(out / f), load_tensor_file(run_dir / f)), f
    assert read_json(out / "universal_top_heads.json") == read_json(run_dir / "universal_top_heads.json")
