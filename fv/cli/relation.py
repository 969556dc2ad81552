"""``fv relation`` (M7): the per-q relation pipeline, resumable."""

from __future__ import annotations

import argparse

from fv.cli.common import add_quiet, parse_q_list


def cmd_relation(a: argparse.Namespace) -> int:
    from fv.progress import log_to_stderr
    from fv.runtime.relation import RelationConfig, run_relation

    cfg = RelationConfig(relation_csv=a.relation_csv, out=a.out, model=a.model, device=a.device, dtype=a.dtype,
                         q_list=parse_q_list(a.q_list), n_trials_per_q=a.n_trials_per_q, n_demos=a.n_demos, topk=a.topk,
                         seed=a.seed, edit_layers=a.edit_layers, mode=a.mode, workers=a.workers,
                         stop_on_error=a.stop_on_error, cpu_threads=a.cpu_threads)
    summary = run_relation(cfg, log=log_to_stderr(a.quiet), quiet=a.quiet)
    if not a.no_plots:
        from fv.plots import PlotsUnavailable, draw_relation

        try:
            draw_relation(summary["root"])
        except PlotsUnavailable as exc:
            log_to_stderr(a.quiet)(str(exc))
    done = sum(1 for v in summary["status"].values() if v == "completed")
    print(f"{done} of {len(summary['q_ids'])} qs completed, {len(summary['skipped'])} skipped, {len(summary['failed'])} failed")
    for q in summary["q_ids"]:
        best = summary.get("best_layer", {}).get(q)
        if best is not None:
            print(f"  {q}: best layer {best}")
    return 1 if summary["failed"] else 0


def register(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - argparse exposes no public type
    r = sub.add_parser("relation", help="the per-q relation pipeline (M7)",
                       description="For each eligible q of a relation CSV: q-wise fixed trials, mean activations, the indirect-effect sweep, top-k heads, the FV, and zero-shot injection at every edit layer. Resumes where a previous run stopped.")
    r.add_argument("--relation-csv", "--relation_csv", dest="relation_csv", required=True, help="CSV with columns id, ex_A, ex_B")
    r.add_argument("--model", default=None, help="model folder or tiny model name (default tiny-llama)")
    r.add_argument("--out", default="results_fv", help="output root; results go to <out>/<relation>/<q_id>/ (default results_fv)")
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
    r.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    r.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (default float32)")
    r.add_argument("--no-plots", dest="no_plots", action="store_true", help="write no pictures (they need matplotlib: pip install 'fv[plots]')")
    add_quiet(r)
    r.set_defaults(func=cmd_relation)
