"""``fv universal run`` (earlier a bare ``fv universal``): the universal FV of a model (Todd et al., appendix G): indirect effects per task, the ICL-baseline
filter, the AIE over kept tasks, its top-k heads, and each task's FV from those heads (docs/universal.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fv.cli.common import add_model_args, add_noun, add_quiet, parse_q_list
from fv.lock import HELP as LOCK_HELP


def _files(spec: str | None) -> list[str] | None:
    return [s.strip() for s in spec.split(",") if s.strip()] if spec else None


def cmd_universal(a: argparse.Namespace) -> int:
    from fv.lock import output_lock
    from fv.pipelines.universal import UniversalConfig
    from fv.progress import log_to_stderr

    cfg = UniversalConfig(out=a.out, model=a.model, datasets=_files(a.datasets), fixed_trials=_files(a.fixed_trials),
                          relation_csv=a.relation_csv, q_list=parse_q_list(a.q_list), n_top_heads=a.n_top_heads,
                          task_filter=a.task_filter, mode=a.mode, edit_layers=a.edit_layers, max_trials=a.max_trials,
                          n_trials=a.n_trials, n_shots=a.n_shots, seed=a.seed, n_trials_per_q=a.n_trials_per_q,
                          n_demos=a.n_demos, device=a.device, dtype=a.dtype, cpu_threads=a.cpu_threads)
    for f in (cfg.fixed_trials or []):  # a bad file fails before the model loads
        from fv.runtime.trials import load_trials

        load_trials(f)
    log = log_to_stderr(a.quiet)
    with output_lock(Path(a.out), note=log):
        return _locked(a, cfg, log)


def _locked(a: argparse.Namespace, cfg, log) -> int:
    from fv.errors import UsageError
    from fv.pipelines.universal import run_universal

    if a.no_wait:
        raise UsageError("--no-wait: fv universal waits for its tasks (the AIE needs them all before the FVs); drop --no-wait.")
    cluster = None
    executor = a.executor
    if a.cluster_config and not executor:
        from fv.pipelines.cluster import load_cluster_file

        executor = load_cluster_file(a.cluster_config).get("executor")
    if executor and executor != "inprocess":
        from fv.cli.relation import cluster_from_args

        a.executor = executor
        a.qs_per_task = a.tasks_per_task
        cluster = cluster_from_args(a)
    result = run_universal(cfg, quiet=a.quiet, log=log, cluster=cluster)
    if not a.no_plots:
        from fv.plots import PlotsUnavailable, draw_universal

        try:
            for pic in draw_universal(cfg.out):
                log(f"picture: {pic.path}")
        except PlotsUnavailable as exc:
            log(str(exc))
    kept = [t["name"] for t in result["tasks"] if t["kept"]]
    print(f"wrote {cfg.out}: AIE over {len(kept)} of {len(result['tasks'])} tasks ({', '.join(kept)}); "
          f"{len(result['heads'])} universal heads, first " + ", ".join(f"({l}, {h}, {s})" for l, h, s in result["heads"][:3]))
    for t in result["tasks"]:
        print(f"  {t['name']}: ICL accuracy {t['icl_accuracy']:.2f}, majority baseline {t['majority_baseline']:.2f}, "
              f"{'kept' if t['kept'] else 'dropped'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - argparse exposes no public type
    from fv.cli.relation import add_cluster_args

    verbs = add_noun(sub, "universal", help="run: the universal FV, indirect effects averaged over tasks (appendix G)",
                     description="The universal FV of a model (Todd et al., appendix G). `fv universal` followed by its "
                                 "options (the earlier spelling) runs `fv universal run`.")
    u = verbs.add_parser(
        "run", help="the universal FV: indirect effects averaged over tasks (appendix G; alias: fv universal [options])",
        description="Per task: mean activations, indirect effects and ICL accuracy on its fixed trials; the tasks whose "
                    "ICL accuracy beats their majority-label baseline are kept; the AIE (mean over kept tasks) gives the "
                    "top-k universal heads; each task's FV is built from its own mean activations and those heads and "
                    "evaluated zero-shot at --edit-layers. Give exactly one task source. Resumes: a task whose model, "
                    "trials and mode are unchanged is reused. " + LOCK_HELP)
    add_model_args(u, attn=False)
    src = u.add_argument_group("tasks (exactly one)")
    src.add_argument("--datasets", default=None,
                     help="comma-separated ICL dataset JSONs, one task each; trials made as `fv trials make` makes them "
                          "(--n-trials, --n-shots, --seed)")
    src.add_argument("--fixed-trials", dest="fixed_trials", default=None,
                     help="comma-separated fixed-trials JSONs, one task each, used as given (the task is the file stem)")
    src.add_argument("--relation-csv", dest="relation_csv", default=None,
                     help="a relation CSV (id, ex_A, ex_B): one task per q of --q-list")
    src.add_argument("--q-list", dest="q_list", default=None, help="with --relation-csv: comma-separated q ids, or all (default all)")
    u.add_argument("--out", default="results_fv/universal", help="output folder (default results_fv/universal)")
    u.add_argument("--n-top-heads", dest="n_top_heads", type=int, default=10, help="universal heads: the top-k of the AIE (default 10)")
    u.add_argument("--task-filter", dest="task_filter", choices=("icl-baseline", "all"), default="icl-baseline",
                   help="icl-baseline (default): keep a task when its ICL accuracy on its fixed trials is strictly above "
                        "its majority-label baseline; all: keep every task")
    u.add_argument("--mode", choices=("exact", "fast"), default="exact",
                   help="exact: one forward pass per (trial, layer, head), bit-identical to the reference; fast: the "
                        "patched last tokens of all heads in a few passes per trial (docs/universal.md, cost)")
    u.add_argument("--edit-layers", dest="edit_layers", default=None,
                   help="layers each task's universal FV is evaluated at: N, A-B, a comma list, or all (default 9, or the last layer)")
    u.add_argument("--max-trials", dest="max_trials", type=int, default=None, help="use only each task's first N trials")
    u.add_argument("--n-trials", dest="n_trials", type=int, default=10, help="--datasets: trials per task (default 10)")
    u.add_argument("--n-shots", dest="n_shots", type=int, default=10, help="--datasets: demonstrations per prompt (default 10)")
    u.add_argument("--seed", type=int, default=0, help="seed of the trials (default 0)")
    u.add_argument("--n-trials-per-q", dest="n_trials_per_q", type=int, default=25, help="--relation-csv: trials per q (default 25)")
    u.add_argument("--n-demos", dest="n_demos", type=int, default=9, help="--relation-csv: demonstrations per prompt (default 9)")
    u.add_argument("--cpu-threads", dest="cpu_threads", type=int, default=None,
                   help="CPU threads per task (default: torch's); CPU results depend on it")
    u.add_argument("--no-plots", dest="no_plots", action="store_true", help="write no pictures (they need matplotlib: pip install 'fv[plots]')")
    add_cluster_args(u, what="task")
    u.add_argument("--tasks-per-task", dest="tasks_per_task", type=int, default=None,
                   help="with --executor: tasks per array element; each element loads the model once (default 1)")
    add_quiet(u)
    u.set_defaults(func=cmd_universal)
