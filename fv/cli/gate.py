"""``fv gate m7``: the M7 gate over every q as one job array (fv.pipelines.gate_m7), printed as a per-q table
with the first divergence of every failing q; exit code 0 only when every q passes."""

from __future__ import annotations

import argparse
from pathlib import Path

from fv.errors import UsageError


def print_table(merged: dict) -> None:
    from fv.pipelines.gate_m7 import passes

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
    from fv.pipelines.gate_m7 import GateConfig, run_gate
    from fv.progress import log_to_stderr

    if a.no_wait:
        raise UsageError("--no-wait is not supported; the gate's verdict needs every q (run it in the background instead)")
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
    from fv.cli.common import add_model_args, add_noun, add_quiet, add_reference_args
    from fv.cli.relation import add_cluster_args

    gs = add_noun(sub, "gate", help="m7: a gate of the parity suite as a job array (M7 across a cluster)",
                  description="A gate of the parity suite run as a job array and merged into one pass/fail.")
    m = gs.add_parser("m7", help="the M7 gate, one array task per q, merged into one pass/fail",
                      description="Runs `pytest -m m7 --q-list Qk` for every q as one array task each (local processes or "
                                  "Slurm), then prints the per-q table and the first divergence of every failing q. Exit "
                                  "code 0 only when every q passes.")
    m.add_argument("--relation-csv", dest="relation_csv", required=True, help="CSV with columns id, ex_A, ex_B")
    m.add_argument("--q-list", dest="q_list", default=None, help="comma-separated q ids, or all (default all)")
    m.add_argument("--n-trials-per-q", dest="n_trials_per_q", type=int, default=3, help="trials per q (default 3, as pytest's)")
    m.add_argument("--out", default="results_fv/gate_m7", help="reports, logs and m7_gate.json (default results_fv/gate_m7)")
    add_model_args(m, attn=False)
    add_reference_args(m)
    add_cluster_args(m, what="gate")
    m.set_defaults(executor=None)
    add_quiet(m)
    m.set_defaults(func=cmd_m7)
