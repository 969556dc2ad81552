"""The benchmarks run and print the table they promise (structure only: nothing here is timed or compared with
a time), and scripts/gpu_check.sh's dry run lists the per-stage benchmark on the 8B shape."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from fv.paths import REPO_ROOT

STAGES = ["preparation", "mean activations", "indirect effects", "top heads and FV", "evaluation", "writing artifacts"]


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_bench_pipeline_table_structure(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO_ROOT / "benchmarks" / "bench_pipeline.py"), "--shapes", "tiny", "--n-trials", "2",
           "--memory-trials", "1", "--exact-trials", "1", "--reps", "1", "--threads", "1", "--json", str(out),
           "--plot", str(tmp_path / "cost.png")]
    p = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["stages"] == STAGES
    (shape,) = data["shapes"]
    assert shape["shape"] == "tiny" and shape["edit_layer"] == shape["n_layers"] // 3
    assert set(shape["runs"]) == {"exact", "fast"}
    assert shape["runs"]["exact"]["trials"] == 1 and shape["runs"]["fast"]["trials"] == 2
    for mode, run in shape["runs"].items():
        assert list(run["stages"]) == STAGES
        for st, v in run["stages"].items():
            assert math.isfinite(v["passes_per_trial"]) and v["passes_per_trial"] >= 0, (mode, st, v)
        assert math.isclose(run["total"]["seconds"], sum(v["seconds"] for v in run["stages"].values()))
        assert math.isclose(run["total"]["flop_passes_per_trial"], sum(v["flop_passes_per_trial"] for v in run["stages"].values()))
    # FLOP passes are counted, not timed: exact mode runs a clean pass of the same length for the mean activations
    # and a pass per (layer, head) for the indirect effects; fast mode a prefix pass and a row per head from its layer up
    ex, fa, (L, H) = shape["runs"]["exact"]["stages"], shape["runs"]["fast"]["stages"], (shape["n_layers"], shape["n_heads"])
    assert math.isclose(ex["mean activations"]["flop_passes_per_trial"], 1.0, rel_tol=1e-9)
    assert ex["indirect effects"]["flop_passes_per_trial"] >= 1 + L * H
    assert 1.0 < fa["indirect effects"]["flop_passes_per_trial"] < 1.0 + (L + 1) / 2 * H * 1.2 / shape["prompt_tokens"][0]
    assert set(shape["memory"]["fast"]) == {"1", "2"} and set(shape["memory"]["exact"]) == {"1"}
    lines = p.stdout.splitlines()
    header = next(line for line in lines if line.startswith("stage"))
    assert "passes/trial" in header and "FLOP passes" in header and "peak MiB @1" in header and "peak MiB @2" in header
    rows = [line.split()[0:2] for line in lines if line.split()[:1] and any(line.startswith(s) for s in STAGES + ["total"])]
    assert len(rows) == 2 * (len(STAGES) + 1)
    assert (tmp_path / "cost.png").stat().st_size > 0


def test_gpu_check_dry_run_lists_the_stage_table_on_the_8b_shape(tmp_path):
    p = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "gpu_check.sh"), "--dry-run"], capture_output=True, text=True,
                       env={**_env(), "OUT": str(tmp_path / "g")}, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "layers=32 width=4096 heads=32 kv=8" in p.stdout
    bench = next(line for line in p.stdout.splitlines() if line.startswith("step bench-pipeline"))
    assert "benchmarks/bench_pipeline.py" in bench and "llama-random-L32-d4096" in bench and "--reps 3" in bench
    assert not (tmp_path / "g").exists()  # a dry run writes nothing
    bad = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "gpu_check.sh"), "--nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--dry-run" in bad.stderr
