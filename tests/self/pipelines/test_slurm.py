"""The relation pipeline and the M7 gate as real Slurm job arrays (start a cluster: scripts/slurm_local.sh start).

Each test submits to the cluster that ``sinfo`` answers for, and skips with one line when none does. Tiny model,
one trial per q, one edit layer: the point is the scheduling (arrays, cancellation, resubmission, merging), and
that a q run by a Slurm task writes the same bytes as one run in this process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from fv.paths import FIXTURES

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
CSV = str(FIXTURES / "relation_tiny.csv")
QS = ["Q1", "Q2", "Q4"]


@pytest.fixture(scope="module")
def slurm_cluster() -> str:
    """The idle node's name; skips when no Slurm cluster answers."""
    if not shutil.which("sinfo") or not shutil.which("sbatch"):
        pytest.skip("no Slurm cluster: sinfo/sbatch not on PATH (scripts/slurm_local.sh start)")
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.skip("no Slurm cluster: sinfo did not answer in 15 s")
    nodes = [line.split() for line in out.stdout.splitlines() if line.strip()]
    if out.returncode != 0 or not any(st.rstrip("*") in ("idle", "mixed", "allocated") for _, st in nodes):
        why = ((out.stderr or out.stdout).strip().splitlines() or ["no usable node"])[0]
        pytest.skip(f"no Slurm cluster answers ({why}); start one with scripts/slurm_local.sh start")
    if subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, timeout=15).returncode != 0:
        pytest.skip("the Slurm cluster has no accounting (sacct fails): cancelled jobs would go unseen")
    return nodes[0][0]


def _cfg(out: Path, qs=QS):
    """A small run: tiny model, one trial per q, one edit layer."""
    from fv.pipelines.relation import RelationConfig

    return RelationConfig(relation_csv=CSV, out=str(out), model="tiny-llama", device="cpu", n_trials_per_q=1,
                          edit_layers="9", q_list=list(qs))


# Loaded by the held task's Python at start-up (its folder is put first on the job's PYTHONPATH): the q named
# here, once its status says running, opens a named pipe for reading and waits there until the test, which opens
# the other end, closes it. The q is held mid-run by the test, never by how long it takes.
HOLD = """
import fv.pipelines.relation as _relation
_run_q = _relation.run_q
def run_q(lm, cfg, root, q, *a, **k):
    if q == {q!r}:
        with open({fifo!r}) as held:
            held.read()
    return _run_q(lm, cfg, root, q, *a, **k)
_relation.run_q = run_q
"""


def _hold_setup(tmp_path: Path, q: str) -> tuple[list[str], Path]:
    """Job set-up lines that hold ``q`` in its task, and the named pipe that holds it."""
    fifo, hooks = tmp_path / f"hold_{q}", tmp_path / "hold_hooks"
    os.mkfifo(fifo)
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(HOLD.format(q=q, fifo=str(fifo)))
    return [f"export PYTHONPATH={hooks}:$PYTHONPATH"], fifo


def _open_held(fifo: Path, within_s: float = 300) -> int:
    """The writing end of ``fifo``: returns once the held q has opened its end (it is then mid-run)."""
    fds: list[int] = []
    opener = threading.Thread(target=lambda: fds.append(os.open(fifo, os.O_WRONLY)), daemon=True)
    opener.start()
    opener.join(within_s)
    assert fds, f"the held q never reached its pipe {fifo} in {within_s:.0f} s: its task did not start (see the job logs)"
    return fds[0]


def _wait_tasks(root: Path, tasks: list[dict]) -> None:
    """Until every task of the submission has ended, as the scheduler reports it (fv's own waiting loop)."""
    from submitit import SlurmJob

    from fv.pipelines.cluster import wait_jobs

    wait_jobs([SlurmJob(folder=root / "_jobs" / "%j", job_id=t["job_id"]) for t in tasks], lambda *_: None, poll_s=1.0)


def _cc(**kw):
    from fv.pipelines.cluster import ClusterConfig

    return ClusterConfig(**{"executor": "slurm", "time": "5", "signal_delay_s": 10, "poll_s": 1.0, **kw})


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_slurm_array_writes_the_bytes_of_the_inprocess_run(slurm_cluster, tmp_path, monkeypatch):
    from fv.pipelines.relation import relation_root, run_relation
    from fv.pipelines.relation_array import run_relation_cluster

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    cfg = _cfg(tmp_path / "rel")  # the same --out for both runs: metadata records the trials' path
    b = relation_root(cfg)
    run_relation(cfg)
    a = b.rename(tmp_path / "inprocess")
    summary = run_relation_cluster(cfg, _cc(qs_per_task=2))  # two tasks: [Q1, Q2] and [Q4]
    assert summary["status"] == {q: "completed" for q in QS}, summary
    for q in QS + ["Q3"]:  # Q3: skipped by the trials rule in both
        ta, tb = _tree(a / q), _tree(b / q)
        assert sorted(ta) == sorted(tb), q
        assert [k for k in ta if ta[k] != tb[k]] == [], f"{q}: files differ"
    assert (a / "relation_summary.json").read_bytes() == (b / "relation_summary.json").read_bytes()
    assert len({t["job_id"].split("_")[0] for t in json_of(b / "_jobs" / "submission.json")["tasks"]}) == 1, "one array"


def json_of(p: Path) -> dict:
    import json

    return json.loads(p.read_text())


@pytest.mark.slow(seconds=30)
def test_cancelled_task_is_reported_and_resubmission_runs_only_what_is_missing(slurm_cluster, tmp_path, capsys):
    from fv.cli import main
    from fv.pipelines.relation import read_status, relation_root
    from fv.pipelines.relation_array import relation_state, run_relation_cluster

    cfg = _cfg(tmp_path, ["Q1", "Q2"])
    setup, fifo = _hold_setup(tmp_path, "Q2")
    sub = run_relation_cluster(cfg, _cc(setup=setup), wait=False)
    root = relation_root(cfg)
    tasks = json_of(root / "_jobs" / "submission.json")["tasks"]
    victim = next(t for t in tasks if t["qs"] == ["Q2"])
    held = _open_held(fifo)  # Q2 is mid-run now, and stays there until `held` is closed
    try:
        assert read_status(root, "Q2")["status"] == "running"
        subprocess.run(["scancel", victim["job_id"]], check=True)
        _wait_tasks(root, tasks)
    finally:
        os.close(held)
    st = relation_state(root)
    assert st["active_tasks"] == [], st
    assert st["q"]["Q1"]["status"] == "completed"
    q2 = read_status(root, "Q2")
    assert q2["status"] == "failed" and q2["job_id"] == victim["job_id"] and "CANCELLED" in q2["error"], q2
    assert Path(q2["scheduler_log"]).is_file()
    assert main(["relation", "status", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "Q2: failed" in out and victim["stderr"] in out and sub["job_id"] in out

    q1_done = (root / "Q1" / "mean_activations.pt").stat().st_mtime_ns
    again = run_relation_cluster(cfg, _cc())
    assert again["reused"] == ["Q1"] and again["status"] == {"Q1": "completed", "Q2": "completed"}
    assert (root / "Q1" / "mean_activations.pt").stat().st_mtime_ns == q1_done, "a completed q was redone"
    resub = json_of(root / "_jobs" / "submission.json")["tasks"]
    assert [t["qs"] for t in resub] == [["Q2"]]


@pytest.mark.slow(seconds=40)
def test_m7_gate_across_slurm_equals_the_inprocess_gate(slurm_cluster, tmp_path):
    """The merged per-q outcome of ``fv gate m7 --executor slurm`` is what one pytest process over the same qs
    reports. Against the live reference when FV_SRC_ROOT names it (minutes per q on a CPU), else the trials
    tests with the parity test skipped alike on both sides."""
    from fv.pipelines.gate_m7 import GateConfig, inprocess_outcomes, passes, q_outcome, run_gate

    gc = GateConfig(qs=["Q1", "Q3"], relation_csv=CSV, model="tiny-llama", n_trials_per_q=1, out=str(tmp_path / "gate"))
    merged = run_gate(gc, _cc())
    here = inprocess_outcomes(gc, tmp_path / "inprocess")
    assert merged["per_q"]["Q1"]["tests"] == here["Q1"]
    assert merged["per_q"]["Q1"]["outcome"] == q_outcome(here["Q1"])
    # too few rows: skipped by the trials rule on both sides (the gate does not submit it)
    assert merged["per_q"]["Q3"]["outcome"] == "skipped" == q_outcome(here["Q3"])
    assert any("trials rule" in v for v in here["Q3"].values())
    assert merged["passed"] == all(passes({"outcome": q_outcome(t), "tests": t}) for t in here.values())
