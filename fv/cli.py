"""The ``fv`` command line: one subcommand per step of the M0-M7 plan. ``fv <command> --help`` tells more."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from fv.errors import FVError


def _bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("true", "1", "yes", "y"):
        return True
    if v in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, found {s!r}")


def _tokenizer(spec: str | None):
    from fv.models import load_tokenizer
    from fv.tiny import resolve_model_path

    return load_tokenizer(resolve_model_path(spec))


def _model_args(p: argparse.ArgumentParser, model_required: bool = False) -> None:
    p.add_argument("--model", "--model_name", dest="model", required=model_required, default=None,
                   help="local model folder, or tiny-llama / tiny-llama3tok (default: the embedded tiny-llama)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (default float32)")


# ---- make-trials / verify-trials (M0) ----------------------------------------------------------------------
def cmd_make_trials(a: argparse.Namespace) -> int:
    from fv.prompts import tokenizer_prepends_bos
    from fv.trials import make_icl_trials, make_relation_trials, save_trials

    tok = _tokenizer(a.tokenizer)
    bos = tokenizer_prepends_bos(tok) if a.model_prepend_bos is None else a.model_prepend_bos
    if bool(a.dataset) == bool(a.relation_csv):
        raise FVError("give exactly one of --dataset (an ICL JSON) or --relation-csv.")
    if a.dataset:
        raw = make_icl_trials(a.dataset, tok, a.n_trials, a.n_shots, a.seed, a.test_split, model_name_for_tokenizer=a.tokenizer or "tiny-llama",
                              model_prepend_bos=bos, prepend_bos_token_used=a.prepend_bos_token_used)
    else:
        qs = None if a.q_list in (None, "all") else [q.strip() for q in a.q_list.split(",") if q.strip()]
        raw = make_relation_trials(a.relation_csv, tok, a.n_trials_per_q, a.n_demos, a.seed, qs,
                                   model_name_for_tokenizer=a.tokenizer or "tiny-llama", model_prepend_bos=bos,
                                   prepend_bos_token_used=a.prepend_bos_token_used)
        for s in raw["meta"]["skipped_qs"]:
            print(f"skipped {s['q_id']}: {s['n_rows']} rows, {s['reason']}", file=sys.stderr)
    save_trials(a.out, raw)
    print(f"wrote {a.out}: {len(raw['trials'])} trials")
    return 0


def cmd_verify_trials(a: argparse.Namespace) -> int:
    from fv.trials import load_trials, verify_token_ids

    ft = load_trials(a.path)
    tok = _tokenizer(a.tokenizer or ft.meta.get("model_name_for_tokenizer") or None)
    bad = verify_token_ids(ft, tok, a.verify_n)
    n = len(ft.subset(a.verify_n))
    for m in bad:
        print(f"MISMATCH {m}")
    print(f"{ft.path}: {n} trials checked, {len(bad)} token-id mismatches (mismatch_count={len(bad)})")
    return 1 if bad else 0


# ---- reference (M1, M3) -------------------------------------------------------------------------------------
def cmd_reference(a: argparse.Namespace) -> int:
    from fv.dump import build_dump
    from fv.io import save_tensors, write_json
    from fv.meta import run_meta
    from fv.models import load_model
    from fv.parity import src_from_reference
    from fv.reference import Reference, ReferenceUnavailable, find_src_root
    from fv.stages import Params
    from fv.trials import load_trials, require_tokenizer_agrees

    root = find_src_root(a.src_root)
    if root is None:
        raise ReferenceUnavailable("no reference found: pass --src-root PATH (the reference's src/), or set FV_SRC_ROOT.")
    ref = Reference(root, a.baukit_root, compat=a.src_compat)
    lm = load_model(a.model, a.device, a.dtype)
    ft = load_trials(a.fixed_trials)
    require_tokenizer_agrees(ft, lm.tokenizer)
    params = Params(n_top_heads=a.n_top_heads, edit_layer=a.edit_layer, max_trials=a.max_trials)
    lm.info.check_edit_layer(a.edit_layer)
    print(f"reference {root}: {len(ft.subset(a.max_trials))} trials on {lm.name} ({lm.device}, {lm.dtype})", file=sys.stderr)
    for n in ref.notes:
        print(f"note: {n}", file=sys.stderr)
    sv, inj_error = src_from_reference(ref, lm, ft, params)
    if inj_error and a.dump:
        raise FVError(inj_error)
    out = Path(a.out)
    ds = ft.dataset_name
    meta = run_meta(lm, ft, params.as_dict(), source="reference", src_root=str(root), src_notes=ref.notes, src_compat=ref.compat)
    save_tensors(out / f"{ds}_mean_head_activations_FIXED.pt", sv.values["mean_activations"])
    write_json(out / f"{ds}_dummy_labels.json", sv.values["slot"]["dummy_labels"])
    save_tensors(out / f"{ds}_indirect_effect.pt", sv.values["indirect_effect"])
    write_json(out / "reference_meta.json", meta)
    if a.dump:
        write_json(out / "src_reference_dump.json", build_dump(sv, meta, a.edit_layer))
        save_tensors(out / "src_fv.pt", sv.values["fv"])
        write_json(out / "top_heads_src.json", sv.values["top_heads"])
    print(f"wrote reference artifacts to {out}")
    if inj_error:
        print(f"warning: {inj_error}", file=sys.stderr)
    return 0


# ---- run (M4) ------------------------------------------------------------------------------------------------
def cmd_run(a: argparse.Namespace) -> int:
    from fv.models import load_model
    from fv.progress import Progress
    from fv.runtime import RunConfig, parse_layers, run_runtime
    from fv.tiny import FIXTURES
    from fv.trials import load_trials, make_icl_trials, require_tokenizer_agrees, save_trials

    lm = load_model(a.model, a.device, a.dtype)
    out = Path(a.out)
    if a.fixed_trials:
        ft = load_trials(a.fixed_trials)
    else:
        path = out / f"fixed_trials_antonym_tiny_t10_s10_seed0_{lm.name}.json"
        save_trials(path, make_icl_trials(FIXTURES / "antonym_tiny.json", lm.tokenizer, 10, 10, 0,
                                          model_name_for_tokenizer=lm.name, model_prepend_bos=lm.prepend_bos,
                                          dataset_json_label="antonym_tiny.json"))
        ft = load_trials(path)
        print(f"no --fixed-trials: made {path} from the embedded antonym data", file=sys.stderr)
    require_tokenizer_agrees(ft, lm.tokenizer)
    layers = parse_layers(a.edit_layers, lm.info.n_layers, a.edit_layer)
    cfg = RunConfig(n_top_heads=a.n_top_heads, edit_layers=layers, max_trials=a.max_trials, mode=a.mode, resume=a.resume)
    summary = run_runtime(lm, ft, out, cfg, Progress(enabled=not a.quiet))
    z = summary["by_prompt_set"]["zero_shot"]
    print(f"wrote runtime artifacts to {out}: edit layer {summary['edit_layer']}, zero-shot acc {z['acc_base']:.2f} -> "
          f"{z['acc_with']:.2f}, mean delta logprob {z['mean_delta_logprob']:+.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fv", description="Function vectors: a runtime and a parity suite against the reference src/.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    m = sub.add_parser("make-trials", help="make a fixed-trials file (M0)", description="Make a fixed-trials JSON in the user's schema, from an ICL dataset or a relation CSV (q-wise).")
    m.add_argument("--dataset", "--dataset_json", dest="dataset", help="ICL dataset: a JSON list of {input, output}")
    m.add_argument("--relation-csv", "--relation_csv", dest="relation_csv", help="relation CSV with columns id, ex_A, ex_B")
    m.add_argument("--out", "--out_path", dest="out", required=True, help="where to write the trials JSON")
    m.add_argument("--n-trials", "--n_trials", dest="n_trials", type=int, default=10, help="trials (ICL; default 10)")
    m.add_argument("--n-shots", "--n_shots", dest="n_shots", type=int, default=10, help="demonstrations per prompt (ICL; default 10)")
    m.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    m.add_argument("--test-split", "--test_split", dest="test_split", type=float, default=0.3, help="test fraction of the split (default 0.3)")
    m.add_argument("--tokenizer", "--model_name_for_tokenizer", dest="tokenizer", default=None, help="model or tokenizer folder, or a tiny model name (default tiny-llama)")
    m.add_argument("--model-prepend-bos", "--model_prepend_bos", dest="model_prepend_bos", type=_bool, default=None, help="true|false: the tokenizer adds BOS itself (default: detected)")
    m.add_argument("--prepend-bos-token-used", "--prepend_bos_token_used", dest="prepend_bos_token_used", type=_bool, default=False, help="true|false: write BOS text into prompts (default false)")
    m.add_argument("--q-list", "--q_list", dest="q_list", default=None, help="relation: comma-separated q ids, or all (default all)")
    m.add_argument("--n-trials-per-q", "--n_trials_per_q", dest="n_trials_per_q", type=int, default=25, help="relation: trials per q (default 25)")
    m.add_argument("--n-demos", "--n_demos", dest="n_demos", type=int, default=9, help="relation: demonstrations per prompt (default 9)")
    m.set_defaults(func=cmd_make_trials)

    v = sub.add_parser("verify-trials", help="recompute a trials file's token ids (M0)", description="Recompute every trial's answer ids with a tokenizer and list each disagreement; exit 1 on any.")
    v.add_argument("path", help="fixed-trials JSON")
    v.add_argument("--tokenizer", "--model_name_for_tokenizer", "--tokenizer_name", dest="tokenizer", default=None, help="model or tokenizer folder, or a tiny model name (default: the file's model_name_for_tokenizer)")
    v.add_argument("--verify-n", "--verify_n", dest="verify_n", type=int, default=None, help="check only the first N trials")
    v.set_defaults(func=cmd_verify_trials)

    r = sub.add_parser("reference", help="run the reference src/ on fixed trials (M1 goldens, M3 dump)", description="Drive the reference's own functions on a fixed-trials file and write its golden artifacts; --dump adds the M3 reference dump.")
    r.add_argument("--src-root", dest="src_root", default=None, help="the reference's src/ (else $FV_SRC_ROOT, else ./src)")
    r.add_argument("--baukit-root", dest="baukit_root", default=None, help="folder with baukit/nethook.py when baukit does not import (else $FV_BAUKIT_ROOT)")
    r.add_argument("--src-compat", dest="src_compat", action="store_true", help="apply the reference's FV addition to tensor layer outputs (SPEC 1, pitfall 1)")
    _model_args(r)
    r.add_argument("--fixed-trials", "--fixed_trials_path", dest="fixed_trials", required=True, help="fixed-trials JSON")
    r.add_argument("--out", "--save_path_root", dest="out", required=True, help="output folder")
    r.add_argument("--max-trials", "--max_trials", dest="max_trials", type=int, default=None, help="use only the first N trials")
    r.add_argument("--n-top-heads", "--n_top_heads", dest="n_top_heads", type=int, default=10, help="heads in the FV (default 10)")
    r.add_argument("--edit-layer", "--edit_layer", dest="edit_layer", type=int, default=9, help="FV injection layer (default 9)")
    r.add_argument("--dump", action="store_true", help="also write src_reference_dump.json, src_fv.pt, top_heads_src.json (M3)")
    r.set_defaults(func=cmd_reference)

    u = sub.add_parser("run", help="the fv runtime end to end (M4)", description="Mean activations, indirect effects, top heads, the FV, and its evaluation, with every artifact and its meta.")
    _model_args(u)
    u.add_argument("--fixed-trials", "--fixed_trials_path", dest="fixed_trials", default=None, help="fixed-trials JSON (default: made from the embedded antonym data)")
    u.add_argument("--out", default="results_fv/run", help="output folder (default results_fv/run)")
    u.add_argument("--n-top-heads", "--n_top_heads", dest="n_top_heads", type=int, default=10, help="heads in the FV (default 10)")
    u.add_argument("--edit-layer", "--edit_layer", dest="edit_layer", type=int, default=9, help="FV injection layer (default 9)")
    u.add_argument("--edit-layers", dest="edit_layers", default=None, help="several layers: A-B, a comma list, or all (overrides --edit-layer)")
    u.add_argument("--max-trials", "--max_trials", dest="max_trials", type=int, default=None, help="use only the first N trials")
    u.add_argument("--mode", choices=("exact", "fast"), default="exact", help="exact follows the reference bit for bit; fast reuses the clean pass")
    u.add_argument("--resume", action="store_true", help="skip stages whose outputs and meta already match the inputs")
    u.add_argument("--quiet", action="store_true", help="no progress bar")
    u.set_defaults(func=cmd_run)

    from fv import cli_more

    cli_more.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FVError as exc:
        print(f"fv {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fv {args.command}: interrupted; finished artifacts are complete, rerun with --resume to go on", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
