"""``fv gate m7``: the M7 gate over every q as one job array, merged into one pass/fail.

Each array task runs ``pytest -m m7 --q-list Qk`` (the q's own tests: its trials rule and its parity) in a fresh
process, exactly as a user would by hand, with a JUnit file and the parity reports under ``--out``. The driver
merges them into a per-q table with the first divergence of every failing q; the exit code is 0 only when every
q passes (a q skipped by the trials rule counts as passing, as it does in pytest; a parity test skipped for want of
the reference does not). Why a command and not a pytest option: docs/cluster.md, "The M7 gate on a cluster".

Two gates on one ``--out`` would mix their per-q logs and merged verdicts: the driver holds ``--out``'s writer
lock (fv.lock) for the whole gate, so a second refuses at once, naming the first. The tasks' pytest sessions
write their parity reports into per-(model, trials) folders below it, each under that folder's own lock
(fv.parity.report), as any pytest session with the same ``--fv-out`` does.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fv.errors import FVError, UsageError

M7_TESTS = "tests/relation/test_m7_relation.py"
PER_Q = "q_trials_follow_the_rule or q_parity"
N_DEMOS = 9  # the M7 tests' demonstrations per prompt  # the tests parametrized by q; the others are about the whole CSV


@dataclass
class GateConfig:
    qs: list[str]
    relation_csv: str
    out: str
    model: str | None = None
    n_trials_per_q: int = 3
    device: str = "auto"
    dtype: str = "auto"
    src_root: str | None = None
    baukit_root: str | None = None
    src_compat: bool = False
    pytest_args: list[str] = field(default_factory=list)

    def pytest_command(self, qs: list[str], junit: Path, out: Path) -> list[str]:
        """``pytest -m m7 --q-list ...`` as a user types it, with this gate's options."""
        cmd = [sys.executable, "-m", "pytest", M7_TESTS, "-m", "m7", "-k", PER_Q, "--q-list", ",".join(qs),
               "--relation-csv", str(Path(self.relation_csv).resolve()), "--n-trials-per-q", str(self.n_trials_per_q),
               "--fv-device", self.device, "--fv-dtype", self.dtype, "--fv-out", str(out), f"--junitxml={junit}",
               "-p", "no:cacheprovider", "-q", "-rA"]
        if self.model:
            cmd += ["--fv-model", self.model]
        if self.src_root:
            cmd += ["--src-root", self.src_root, "--require-src"]
        if self.baukit_root:
            cmd += ["--baukit-root", self.baukit_root]
        if self.src_compat:
            cmd += ["--src-compat"]
        return cmd + list(self.pytest_args)


def _repo_root() -> Path:
    from fv.paths import REPO_ROOT

    if not (REPO_ROOT / M7_TESTS).is_file():
        raise FVError(f"fv gate m7: expected the test suite at {REPO_ROOT / M7_TESTS} (a checkout of fv), found none")
    return REPO_ROOT


def junit_outcomes(path: Path, qs: list[str]) -> dict[str, dict[str, str]]:
    """Per q, per test name without the q: ``passed``, ``failed`` or ``skipped: reason``."""
    out: dict[str, dict[str, str]] = {q: {} for q in qs}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name", "")
        if "[" not in name:
            continue
        base, params = name.split("[", 1)
        parts = params.rstrip("]").split("-")
        q = next((q for q in qs if q in parts), None)
        if q is None:
            continue
        test = f"{base}[{'-'.join(p for p in parts if p != q)}]"
        if case.find("failure") is not None or case.find("error") is not None:
            out[q][test] = "failed"
        elif (sk := case.find("skipped")) is not None:
            out[q][test] = "skipped: " + (sk.get("message") or "").split("\n")[0]
        else:
            out[q][test] = "passed"
    return out


def q_outcome(tests: dict[str, str]) -> str:
    if not tests or any(v == "failed" for v in tests.values()):
        return "failed"
    if all(v == "passed" for v in tests.values()):
        return "passed"
    if all(v.startswith("skipped") for v in tests.values()):
        return "skipped"
    return "incomplete"


def run_m7_q(gc_dict: dict, q: str) -> dict:
    """One array task: the q's M7 tests in a fresh pytest process; returns its outcome and first divergence."""
    from fv.io import write_text

    gc = GateConfig(**gc_dict)
    out = Path(gc.out)
    qdir = out / "_gate" / q
    qdir.mkdir(parents=True, exist_ok=True)
    junit = qdir / "junit.xml"
    proc = subprocess.run(gc.pytest_command([q], junit, out), cwd=_repo_root(), capture_output=True, text=True)
    write_text(qdir / "pytest.log", proc.stdout + proc.stderr)
    tests = junit_outcomes(junit, [q])[q] if junit.is_file() else {}
    res = {"q_id": q, "returncode": proc.returncode, "tests": tests, "outcome": q_outcome(tests), "log": str(qdir / "pytest.log")}
    stem = Path(gc.relation_csv).stem
    reports = sorted((out / stem).glob(f"fixed_trials_{stem}_{q}_*/parity_suite_report.json"))  # one per model
    if reports:
        import json

        reps = [json.loads(r.read_text()) for r in reports]
        failing = [r for r in reps if r.get("status") != "PASS"]
        res["parity"] = "FAIL" if failing else "PASS"
        if failing:
            res["earliest_failed_stage"] = failing[0].get("earliest_failed_stage")
            res["first_divergence"] = failing[0].get("first_divergence")
    if res["outcome"] == "failed" and not tests:
        res["error"] = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["pytest wrote no report"]
    return res


def passes(r: dict) -> bool:
    """Passed, or skipped by the trials rule (as pytest counts it); a parity test skipped for want of the
    reference proves nothing and does not pass."""
    return r["outcome"] == "passed" or (r["outcome"] == "skipped" and all("trials rule" in v for v in [r.get("reason", "")] + list(r["tests"].values())))


def run_gate(gc: GateConfig, cc: Any, log=lambda s: None, quiet: bool = True) -> dict:
    """Submit one task per q, wait, merge; writes ``<out>/m7_gate.json``. Refuses, in one line naming the
    holder, when another gate (or any fv writer) holds ``--out``."""
    from fv.lock import output_lock

    _repo_root()
    with output_lock(gc.out, command=f"fv gate m7 --out {gc.out}", note=log):
        return _run_gate_locked(gc, cc, log, quiet)


def _run_gate_locked(gc: GateConfig, cc: Any, log, quiet: bool) -> dict:
    from fv.io import write_json
    from fv.progress import stage_bar
    from fv.runtime.cluster import array_id, job_record, make_executor, wait_jobs
    from fv.runtime.datasets import load_relation_csv
    from fv.runtime.trials import plan_relation_qs

    out = Path(gc.out)
    # A q too small for the trials rule is skipped without a task: pytest skips it within an all-q run, but
    # `pytest -m m7 --q-list Qk` on such a q alone errors (its all-q trials file would be empty).
    plan = plan_relation_qs(load_relation_csv(gc.relation_csv), N_DEMOS, gc.qs)
    per_q: dict[str, dict] = {s["q_id"]: {"q_id": s["q_id"], "tests": {}, "outcome": "skipped",
                                          "reason": f"skipped by the trials rule: {s['n_rows']} rows, {s['reason']}"} for s in plan.skipped}
    todo = plan.q_ids
    ex = make_executor(cc, out / "_gate" / "_jobs" / "%j", name="fv-gate-m7")
    jobs = ex.map_array(run_m7_q, [asdict(gc)] * len(todo), todo) if todo else []
    log(f"submitted the M7 gate for {len(todo)} qs as {cc.executor} job {array_id(jobs) if jobs else '-'}; "
        f"{len(plan.skipped)} skipped by the trials rule")
    with stage_bar("qs", len(gc.qs), quiet, unit="q") as tick:
        tick(len(plan.skipped))

        def on_done(i: int, result: Any, error: BaseException | None) -> None:
            q = todo[i]
            if error is not None:
                rec = job_record(jobs[i])
                result = {"q_id": q, "tests": {}, "outcome": "failed", "error": f"task {rec['job_id']} ended without a result: {type(error).__name__}",
                          "log": rec["stderr"]}
            per_q[q] = result
            log(f"{q}: {result['outcome']}")
            tick(1)

        wait_jobs(jobs, on_done, poll_s=cc.poll_s)
    merged = {"gate": "m7", "executor": cc.executor, "job_id": array_id(jobs) if jobs else None, "config": asdict(gc),
              "per_q": {q: per_q[q] for q in gc.qs}, "passed": all(passes(per_q[q]) for q in gc.qs)}
    write_json(out / "m7_gate.json", merged)
    return merged


def inprocess_outcomes(gc: GateConfig, out: Path) -> dict[str, dict[str, str]]:
    """The same tests in one pytest process over every q, as ``pytest -m m7 --q-list Q1,Q2,...``."""
    out.mkdir(parents=True, exist_ok=True)
    junit = out / "junit.xml"
    subprocess.run(gc.pytest_command(gc.qs, junit, out), cwd=_repo_root(), capture_output=True, text=True)
    return junit_outcomes(junit, gc.qs)


def print_table(merged: dict) -> None:
    rows = merged["per_q"]
    print(f"M7 gate ({merged['executor']} job {merged['job_id']}): {'PASS' if merged['passed'] else 'FAIL'}")
    print(f"  {'q':<6} {'outcome':<10} {'parity':<7} tests")
    for q, r in rows.items():
        tests = ", ".join(f"{k}={v.split(':')[0]}" for k, v in r.get("tests", {}).items())
        print(f"  {q:<6} {r['outcome']:<10} {r.get('parity') or '-':<7} {tests}")
    for q, r in rows.items():
        if passes(r):
            continue
        if r.get("first_divergence") is not None or r.get("earliest_failed_stage"):
            print(f"  {q}: first divergence at {r.get('earliest_failed_stage')}: {r.get('first_divergence')}")
        elif r.get("reason"):
            print(f"  {q}: {r['reason']}")
        elif r.get("error"):
            print(f"  {q}: {r['error']} (log {r.get('log')})")
        else:
            print(f"  {q}: {r['outcome']}; see {r.get('log')}")


def cmd_m7(a: argparse.Namespace) -> int:
    from fv.cli.common import parse_q_list
    from fv.cli.relation import cluster_from_args
    from fv.progress import log_to_stderr

    if a.no_wait:
        raise UsageError("fv gate m7: --no-wait is not supported; the gate's verdict needs every q (run it in the background instead)")
    qs = parse_q_list(a.q_list)
    if qs is None:
        from fv.runtime.datasets import load_relation_csv

        qs = sorted(load_relation_csv(a.relation_csv))
    a.executor = "local" if a.executor in (None, "inprocess") else a.executor
    # every task runs pytest in the checkout's root: paths given relative to here must not change meaning there
    absolute = lambda p: str(Path(p).resolve()) if p else p  # noqa: E731
    model = absolute(a.model) if a.model and Path(a.model).exists() else a.model
    gc = GateConfig(qs=qs, relation_csv=absolute(a.relation_csv), out=absolute(a.out), model=model,
                    n_trials_per_q=a.n_trials_per_q, device=a.device, dtype=a.dtype, src_root=absolute(a.src_root),
                    baukit_root=absolute(a.baukit_root), src_compat=a.src_compat)
    merged = run_gate(gc, cluster_from_args(a), log=log_to_stderr(a.quiet), quiet=a.quiet)
    print_table(merged)
    print(f"  merged result: {Path(a.out) / 'm7_gate.json'}")
    return 0 if merged["passed"] else 1


def register(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - argparse exposes no public type
    from fv.cli.common import add_model_args, add_quiet, add_reference_args
    from fv.cli.relation import add_cluster_args

    g = sub.add_parser("gate", help="a gate of the parity suite as a job array (M7 across a cluster)")
    gs = g.add_subparsers(dest="gate", metavar="GATE", required=True)
    m = gs.add_parser("m7", help="the M7 gate, one array task per q, merged into one pass/fail",
                      description="Runs `pytest -m m7 --q-list Qk` for every q as one array task each (local processes or "
                                  "Slurm), then prints the per-q table and the first divergence of every failing q. Exit "
                                  "code 0 only when every q passes.")
    m.add_argument("--relation-csv", dest="relation_csv", required=True, help="CSV with columns id, ex_A, ex_B")
    m.add_argument("--q-list", dest="q_list", default=None, help="comma-separated q ids, or all (default all)")
    m.add_argument("--n-trials-per-q", dest="n_trials_per_q", type=int, default=3, help="trials per q (default 3, as pytest's)")
    m.add_argument("--out", default="results_fv/gate_m7", help="reports, logs and m7_gate.json (default results_fv/gate_m7)")
    add_model_args(m)
    add_reference_args(m)
    add_cluster_args(m, what="gate")
    m.set_defaults(executor=None)
    add_quiet(m)
    m.set_defaults(func=cmd_m7)
