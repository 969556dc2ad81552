"""Subcommands added by later milestones (diff, relation, doctor); kept apart so cli.py stays readable."""

from __future__ import annotations

import argparse
import sys


def cmd_diff(a: argparse.Namespace) -> int:
    from fv.diff import TOLERANCES, diff_folders, write_diff_report

    report = diff_folders(a.src, a.fv, TOLERANCES[a.tolerance])
    paths = write_diff_report(report, a.out)
    fd = report["first_divergence"]
    for s in report["stages"]:
        print(f"{s['stage']:<17} {s['status']:<8} mismatch_count={s['mismatch_count']:<6} max_abs_diff={s['max_abs_diff']}")
    if fd is None:
        print("first divergence: none")
    else:
        print(f"first divergence: stage {fd['stage']}, file {fd['file']}, key {fd['key']}, trial ({fd['trial_id']}, {fd['trial_idx']}): "
              f"src {str(fd['src'])[:60]} fv {str(fd['fv'])[:60]}")
    print(f"wrote {paths['json']} and {paths['md']}", file=sys.stderr)
    return 0 if report["status"] == "PASS" else 1


def cmd_relation(a: argparse.Namespace) -> int:
    from fv.relation import RelationConfig, run_relation

    qs = None if a.q_list in (None, "all") else [q.strip() for q in a.q_list.split(",") if q.strip()]
    cfg = RelationConfig(relation_csv=a.relation_csv, out=a.out, model=a.model, device=a.device, dtype=a.dtype, q_list=qs,
                         n_trials_per_q=a.n_trials_per_q, n_demos=a.n_demos, topk=a.topk, seed=a.seed,
                         edit_layers=a.edit_layers, mode=a.mode, workers=a.workers, stop_on_error=a.stop_on_error,
                         cpu_threads=a.cpu_threads)
    summary = run_relation(cfg, log=lambda s: print(s, file=sys.stderr))
    done = sum(1 for v in summary["status"].values() if v == "completed")
    print(f"{done} of {len(summary['q_ids'])} qs completed, {len(summary['skipped'])} skipped, {len(summary['failed'])} failed")
    return 1 if summary["failed"] else 0


def cmd_doctor(a: argparse.Namespace) -> int:
    from fv.doctor import run_doctor

    checks = run_doctor(a.src_root, a.model, a.fixed_trials, a.edit_layer, a.baukit_root, a.device, a.dtype)
    n = {s: sum(c.status == s for c in checks) for s in ("OK", "WARN", "FAIL")}
    print(f"{n['OK']} OK, {n['WARN']} WARN, {n['FAIL']} FAIL")
    return 1 if n["FAIL"] else 0


def cmd_build_model(a: argparse.Namespace) -> int:
    from fv.tiny import TINY_MODELS, build_tiny_model

    spec = TINY_MODELS["tiny-llama3tok" if a.tokenizer == "llama3" else "tiny-llama"]
    shape = {"n_layers": a.n_layers, "d_model": a.d_model, "n_heads": a.n_heads, "n_kv_heads": a.n_kv_heads, "d_mlp": a.d_mlp}
    path = build_tiny_model(spec, a.out, shape, init=a.init, device=a.device, dtype=a.dtype)
    print(f"wrote {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - argparse exposes no public type
    dr = sub.add_parser("doctor", help="check the environment, the reference, a model and a trials file",
                        description="One line per check, OK/WARN/FAIL with what to do; exit 1 on any FAIL.")
    dr.add_argument("--src-root", dest="src_root", default=None, help="the reference's src/ (else $FV_SRC_ROOT, else ./src)")
    dr.add_argument("--baukit-root", dest="baukit_root", default=None, help="folder with baukit/nethook.py")
    dr.add_argument("--model", default=None, help="model folder or tiny model name (default tiny-llama)")
    dr.add_argument("--fixed-trials", dest="fixed_trials", default=None, help="a fixed-trials JSON to validate against the model's tokenizer")
    dr.add_argument("--edit-layer", dest="edit_layer", type=int, default=9, help="the layer parity and runs will inject at (default 9)")
    dr.add_argument("--device", default="auto")
    dr.add_argument("--dtype", default="float32")
    dr.set_defaults(func=cmd_doctor)

    b = sub.add_parser("build-model", help="build a random Llama-shaped model folder (tests, GPU checks)",
                       description="Write a randomly initialised Llama model with the given shape and a tokenizer (the tiny BPE or the real Llama 3 one).")
    b.add_argument("--out", required=True, help="model folder to write; keep 'llama' in its name")
    b.add_argument("--tokenizer", choices=("fixture", "llama3"), default="llama3")
    b.add_argument("--n-layers", dest="n_layers", type=int, default=32)
    b.add_argument("--d-model", dest="d_model", type=int, default=4096)
    b.add_argument("--n-heads", dest="n_heads", type=int, default=32)
    b.add_argument("--n-kv-heads", dest="n_kv_heads", type=int, default=8)
    b.add_argument("--d-mlp", dest="d_mlp", type=int, default=14336)
    b.add_argument("--init", choices=("numpy", "torch"), default="torch", help="numpy: the byte-stable recipe of the tiny models; torch: fast random init (large models)")
    b.add_argument("--device", default="cpu", help="where torch init runs (cuda is much faster for large models)")
    b.add_argument("--dtype", default="bfloat16", help="dtype of the saved weights with --init torch (default bfloat16)")
    b.set_defaults(func=cmd_build_model)
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
    r.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    r.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    r.set_defaults(func=cmd_relation)

    d = sub.add_parser("diff", help="compare a reference folder with an fv folder stage by stage (M5)",
                       description="Compare `fv reference --dump` output with `fv run` output in stage order and name the first divergence. Exit 1 when they differ.")
    d.add_argument("--src", required=True, help="folder written by `fv reference --dump` (or any folder in either layout)")
    d.add_argument("--fv", required=True, help="folder written by `fv run`")
    d.add_argument("--out", required=True, help="where src_vs_fv_diff_report.json and .md go")
    d.add_argument("--tolerance", choices=("exact", "fp32"), default="exact", help="exact (default: bit-identical) or fp32 (atol 1e-5, rtol 1e-4)")
    d.set_defaults(func=cmd_diff)
