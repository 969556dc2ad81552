"""``fv relation run`` (M7; earlier a bare ``fv relation``): the per-q relation pipeline, resumable, in this process
or as a job array (``--executor local|slurm``); ``fv relation status OUT`` reads a submitted run back."""

from __future__ import annotations

import argparse

from fv.cli.common import add_layout_arg, add_model_args, add_noun, add_quiet, parse_q_list, tokenizer_for
from fv.lock import HELP as LOCK_HELP


def cmd_relation(a: argparse.Namespace) -> int:
    from fv.errors import UsageError
    from fv.lock import output_lock
    from fv.pipelines.cluster import load_cluster_file
    from fv.pipelines.relation import RelationConfig, relation_root
    from fv.progress import log_to_stderr

    if a.layout != "fv" and getattr(a, "no_wait", False):
        raise UsageError(f"--layout {a.layout} is written when the qs have run; --no-wait returns before that. Drop "
                         "--no-wait, or write the layout later with `fv relation run` on the same options (completed qs "
                         "are reused)")
    if bool(a.relation_csv) == bool(a.fixed_trials):
        raise UsageError("expected exactly one of --relation-csv CSV or --fixed-trials FILE (a sampled-trials file); found "
                      + ("both" if a.relation_csv else "neither") + " (or `fv relation status OUT` to read a run submitted earlier)")
    n_demos = a.n_demos
    if a.fixed_trials:  # the file decides the demos; the q key records them
        from fv.pipelines.relation import read_relation_trials

        n_demos = read_relation_trials(a.fixed_trials, parse_q_list(a.q_list))["meta"]["n_demos"]
    cfg = RelationConfig(relation_csv=a.relation_csv or "", fixed_trials=a.fixed_trials, out=a.out, model=a.model, device=a.device, dtype=a.dtype,
                         q_list=parse_q_list(a.q_list), n_trials_per_q=a.n_trials_per_q, n_demos=n_demos, topk=a.topk,
                         seed=a.seed, edit_layers=a.edit_layers, mode=a.mode, workers=a.workers,
                         stop_on_error=a.stop_on_error, cpu_threads=a.cpu_threads)
    executor = a.executor or (load_cluster_file(a.cluster_config).get("executor") if a.cluster_config else None) or "inprocess"
    log = log_to_stderr(a.quiet)
    # before the model loads: a second command on this relation's folder is refused at once (with --no-wait the
    # lock ends at submission; each task then holds its own q's folder)
    with output_lock(relation_root(cfg), note=log):
        return _relation_locked(a, cfg, executor, log)


def _relation_locked(a: argparse.Namespace, cfg, executor: str, log) -> int:
    from fv.pipelines.relation import run_relation

    if executor == "inprocess":
        summary = run_relation(cfg, log=log, quiet=a.quiet)
    else:
        from fv.pipelines.relation_array import run_relation_cluster

        a.executor = executor
        summary = run_relation_cluster(cfg, cluster_from_args(a), wait=not a.no_wait, log=log, quiet=a.quiet)
        if a.no_wait:
            print(f"submitted {len(summary['submitted'])} qs as job {summary['job_id'] or '(none: every q completed)'}; "
                  f"read the state with: fv relation status {summary['root']}")
            return 0
    if a.layout == "my_fv_project":
        write_layout(summary, cfg.model, log)
    if not a.no_plots:
        from fv.plots import PlotsUnavailable, draw_relation

        try:
            draw_relation(summary["root"])
        except PlotsUnavailable as exc:
            log(str(exc))
    print_summary(summary)
    return 1 if summary["failed"] else 0


def write_layout(summary: dict, model: str, log) -> None:
    """sunsikham/my_fv_project's files under each completed q's ``artifacts/`` (fv.ports.my_fv_project_layout)."""
    from pathlib import Path

    from fv.pipelines.relation import q_trials_path
    from fv.ports.my_fv_project_layout import write_my_fv_project
    from fv.runtime.trials import load_trials

    root = Path(summary["root"])
    tokenizer = None
    for q in summary["q_ids"]:
        if summary["status"].get(q) != "completed":
            continue
        tokenizer = tokenizer or tokenizer_for(model)
        log(f"layout my_fv_project: {write_my_fv_project(root / q, load_trials(q_trials_path(root, q)), tokenizer, model, q)}")


def print_summary(summary: dict) -> None:
    done = sum(1 for v in summary["status"].values() if v == "completed")
    print(f"{done} of {len(summary['q_ids'])} qs completed, {len(summary['skipped'])} skipped, {len(summary['failed'])} failed")
    for q in summary["q_ids"]:
        best = summary.get("best_layer", {}).get(q)
        if best is not None:
            print(f"  {q}: best layer {best}")
        elif summary["status"].get(q) != "completed":
            print(f"  {q}: {summary['status'].get(q)}")


def cluster_from_args(a: argparse.Namespace):  # -> ClusterConfig
    """The per-cluster file, then the options given on the command line."""
    from fv.pipelines.cluster import cluster_config

    return cluster_config(a.cluster_config, executor=a.executor, partition=a.slurm_partition, gpus_per_task=a.gpus_per_task,
                          cpus_per_task=a.cpus_per_task, mem=a.mem, time=a.time, array_parallelism=a.array_parallelism,
                          qs_per_task=getattr(a, "qs_per_task", None))


def add_cluster_args(p: argparse.ArgumentParser, what: str = "q") -> None:
    g = p.add_argument_group("scheduler", "run as a job array through submitit (docs/cluster.md); every option may come from --cluster-config")
    g.add_argument("--executor", choices=("inprocess", "local", "slurm"), default=None,
                   help="inprocess: this process (and --workers); local: one process per array task on this machine; "
                        "slurm: a Slurm job array (default: the --cluster-config file's executor, else inprocess)")
    g.add_argument("--cluster-config", dest="cluster_config", default=None,
                   help="a per-cluster TOML or JSON file with partition, gpus_per_task, cpus_per_task, mem, time, "
                        "array_parallelism, qs_per_task, setup (shell lines run before each task); options override it")
    g.add_argument("--slurm-partition", dest="slurm_partition", default=None, help="Slurm partition (default: the cluster's default)")
    g.add_argument("--gpus-per-task", dest="gpus_per_task", type=int, default=None, help="GPUs per array task (default 0)")
    g.add_argument("--cpus-per-task", dest="cpus_per_task", type=int, default=None, help="CPUs per array task (default 1)")
    g.add_argument("--mem", default=None, help="memory per array task, e.g. 40G (default: the cluster's default per CPU)")
    g.add_argument("--time", default=None, help="time limit per task in minutes or [D-]HH:MM:SS (default 60)")
    g.add_argument("--array-parallelism", dest="array_parallelism", type=int, default=None,
                   help="array tasks running at once (default 64)")
    if what == "q":
        g.add_argument("--qs-per-task", dest="qs_per_task", type=int, default=None,
                       help="qs per array task; each task loads the model once (default 1)")
    g.add_argument("--no-wait", dest="no_wait", action="store_true",
                   help="submit, print the job id and return; read the state later with `fv relation status OUT`")


def cmd_status(a: argparse.Namespace) -> int:
    import json

    from fv.pipelines.relation_array import find_roots, relation_state

    bad = 0
    for root in find_roots(a.out):
        st = relation_state(root)
        if a.json:
            print(json.dumps(st, indent=1))
            continue
        counts: dict[str, int] = {}
        for v in st["q"].values():
            counts[v.get("status", "pending")] = counts.get(v.get("status", "pending"), 0) + 1
        print(f"{root}: {st['executor'] or 'inprocess'} job {st['array_id'] or '-'}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
        for q, v in st["q"].items():
            extra = f"best layer {v['best_layer']}" if v.get("best_layer") is not None else v.get("error", "")
            log = f" (log {v['scheduler_log']})" if v.get("status") == "failed" and v.get("scheduler_log") else ""
            print(f"  {q}: {v.get('status')} {extra}{log}".rstrip())
        if st["active_tasks"]:
            print(f"  {len(st['active_tasks'])} tasks still queued or running; the merged summary is written when they end")
        else:
            print(f"  merged summary: {root / 'relation_summary.json'}")
        bad |= any(v.get("status") == "failed" for v in st["q"].values())
    return 1 if bad else 0


def register(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - argparse exposes no public type
    verbs = add_noun(sub, "relation", help="run | status: the per-q relation pipeline (M7)",
                     description="The per-q relation pipeline: run it, or read the state of a run submitted earlier. "
                                 "`fv relation` followed by its options (the earlier spelling) runs `fv relation run`.")
    r = verbs.add_parser("run", help="the per-q relation pipeline (M7; alias: fv relation [options])",
                         description="For each eligible q of a relation CSV: q-wise fixed trials, mean activations, the indirect-effect sweep, top-k heads, the FV, and zero-shot injection at every edit layer. Resumes where a previous run stopped.")
    r.add_argument("--relation-csv", "--relation_csv", dest="relation_csv", default=None, help="CSV with columns id, ex_A, ex_B (this or --fixed-trials)")
    r.add_argument("--fixed-trials", "--fixed_trials", dest="fixed_trials", default=None,
                   help="an all-q sampled-trials JSON (relation trials with q_id, e.g. from `fv trials make --relation-csv` or "
                        "the user's own sampler): run on exactly its trials instead of drawing them from --relation-csv")
    add_model_args(r, dtype="float32", attn=False)
    r.add_argument("--out", default="results_fv", help="output root; results go to <out>/<relation>/<q_id>/ (default "
                   "results_fv). " + LOCK_HELP.replace("--out", "<out>/<relation>"))
    r.add_argument("--q-list", "--q_list", dest="q_list", default=None, help="comma-separated q ids, or all (default all)")
    r.add_argument("--n-trials-per-q", "--n_trials_per_q", dest="n_trials_per_q", type=int, default=25, help="trials per q (default 25)")
    r.add_argument("--n-demos", "--n_demos", dest="n_demos", type=int, default=9, help="demonstrations per prompt (default 9)")
    r.add_argument("--topk", type=int, default=20, help="heads in each q's FV (default 20)")
    r.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    r.add_argument("--edit-layers", "--edit_layers", dest="edit_layers", default="all", help="A-B, a comma list, or all (default all)")
    r.add_argument("--mode", choices=("exact", "fast"), default="exact", help="runtime mode (default exact)")
    r.add_argument("--workers", type=int, default=1, help="worker processes, each loading the model once (default 1)")
    r.add_argument("--stop-on-error", dest="stop_on_error", action="store_true", help="stop at the first failed q instead of recording it and going on")
    r.add_argument("--cpu-threads", dest="cpu_threads", type=int, default=1, help="CPU threads per q (default 1); results depend on it, never on --workers")
    r.add_argument("--no-plots", dest="no_plots", action="store_true", help="write no pictures (they need matplotlib: pip install 'fv[plots]')")
    add_layout_arg(r, "<out>/<relation>/<q_id>")
    add_cluster_args(r)
    add_quiet(r)
    r.set_defaults(func=cmd_relation)
    st = verbs.add_parser("status", help="read the state of a run submitted earlier (--no-wait) and merge its summary",
                          description="Per q: status, best layer, and for a failed q its scheduler log. Once no task is "
                                      "queued or running, writes the merged relation_summary.json. Exit code 1 when a q failed.")
    st.add_argument("out", help="the --out of `fv relation run`, or one relation's folder under it")
    st.add_argument("--json", action="store_true", help="print the state as JSON")
    st.set_defaults(func=cmd_status)
