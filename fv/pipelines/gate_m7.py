"""The M7 gate over every q as one job array, merged into one pass/fail (``fv gate m7`` drives it).

Each array task runs ``pytest -m m7 --q-list Qk`` (the q's own tests: its trials rule and its parity) in a fresh
process, exactly as a user would by hand, with a JUnit file and the parity reports under ``--out``. The driver
merges them into a per-q table with the first divergence of every failing q; the gate passes only when every
q passes (a q skipped by the trials rule counts as passing, as it does in pytest; a parity test skipped for want of
the reference does not). Why a command and not a pytest option: docs/cluster.md, "The M7 gate on a cluster".

Two gates on one ``--out`` would mix their per-q logs and merged verdicts: the driver holds ``--out``'s writer
lock (fv.lock) for the whole gate, so a second refuses at once, naming the first. The tasks' pytest sessions
write their parity reports into per-(model, trials) folders below it, each under that folder's own lock
(fv.parity.report), as any pytest session with the same ``--fv-out`` does.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fv.errors import FVError

M7_TESTS = "tests/relation/test_m7_relation_qwise.py"
PER_Q = "q_trials_follow_the_rule or q_parity"  # the tests parametrized by q; the others are about the whole CSV
N_DEMOS = 9  # the M7 tests' demonstrations per prompt


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
    """One q's outcome from its tests' (``junit_outcomes``): ``failed`` when any failed or none ran, ``passed`` when
    all passed, ``skipped`` when all were skipped, else ``incomplete``."""
    if not tests or any(v == "failed" for v in tests.values()):
        return "failed"
    if all(v == "passed" for v in tests.values()):
        return "passed"
    if all(v.startswith("skipped") for v in tests.values()):
        return "skipped"
    return "incomplete"


def run_m7_qs(gc_dict: dict, qs: list[str]) -> dict[str, dict]:
    """One array task: each of its qs' M7 tests in a fresh pytest process; per q, its outcome and first divergence."""
    gc = GateConfig(**gc_dict)
    return {q: run_m7_q(gc, q) for q in qs}


def run_m7_q(gc: GateConfig, q: str) -> dict:
    """The q's M7 tests in a fresh pytest process, as a user types them; its outcome and first divergence."""
    from fv.io import write_text

    out = Path(gc.out)
    qdir = out / "_gate" / q
    qdir.mkdir(parents=True, exist_ok=True)
    junit = qdir / "junit.xml"
    proc = subprocess.run(gc.pytest_command([q], junit, out), cwd=_repo_root(), capture_output=True, text=True)
    write_text(qdir / "pytest.log", proc.stdout + proc.stderr)
    tests = junit_outcomes(junit, [q])[q] if junit.is_file() else {}
    res = {"q_id": q, "returncode": proc.returncode, "tests": tests, "outcome": q_outcome(tests), "log": str(qdir / "pytest.log")}
    stem = Path(gc.relation_csv).stem
    # one per model: <stem>/<q's trials id>/[<model>/]parity_suite_report.json
    reports = sorted((out / stem).glob(f"fixed_trials_{stem}_{q}_*/**/parity_suite_report.json"))
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
    from fv.pipelines.array import groups_of, run_array
    from fv.runtime.datasets import load_relation_csv
    from fv.runtime.trials import plan_relation_qs

    out = Path(gc.out)
    # A q too small for the trials rule is skipped without a task: pytest skips it within an all-q run, but
    # `pytest -m m7 --q-list Qk` on such a q alone errors (its all-q trials file would be empty).
    plan = plan_relation_qs(load_relation_csv(gc.relation_csv), N_DEMOS, gc.qs)
    per_q: dict[str, dict] = {s["q_id"]: {"q_id": s["q_id"], "tests": {}, "outcome": "skipped",
                                          "reason": f"skipped by the trials rule: {s['n_rows']} rows, {s['reason']}"} for s in plan.skipped}
    if plan.skipped:
        log(f"M7 gate: {len(plan.skipped)} qs skipped by the trials rule, no task for them")

    def result(t: Any, res: dict[str, dict]) -> None:
        for q, r in res.items():
            per_q[q] = r
            log(f"{q}: {r['outcome']}")

    def lost(t: Any, why: str) -> None:
        for q in t.items:
            per_q[q] = {"q_id": q, "tests": {}, "outcome": "failed", "error": f"task {t.job_id} ended without a result: {why}", "log": t.log}
            log(f"{q}: failed")

    job_id, _tasks = run_array(cc, out / "_gate" / "_jobs", "fv-gate-m7", run_m7_qs, [asdict(gc)],
                               groups_of(plan.q_ids, cc.qs_per_task), on_result=result, on_lost=lost,
                               bar=("qs", len(gc.qs), len(plan.skipped)), unit="q", record={"gate": "m7"}, item_key="qs", quiet=quiet, log=log)
    merged = {"gate": "m7", "executor": cc.executor, "job_id": job_id, "config": asdict(gc),
              "per_q": {q: per_q[q] for q in gc.qs}, "passed": all(passes(per_q[q]) for q in gc.qs)}
    write_json(out / "m7_gate.json", merged)
    return merged


def inprocess_outcomes(gc: GateConfig, out: Path) -> dict[str, dict[str, str]]:
    """The same tests in one pytest process over every q, as ``pytest -m m7 --q-list Q1,Q2,...``."""
    out.mkdir(parents=True, exist_ok=True)
    junit = out / "junit.xml"
    subprocess.run(gc.pytest_command(gc.qs, junit, out), cwd=_repo_root(), capture_output=True, text=True)
    return junit_outcomes(junit, gc.qs)
