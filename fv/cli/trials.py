"""``fv trials make`` and ``fv trials verify`` (M0; earlier ``fv make-trials``, ``fv verify-trials``): fixed-trials files
in the user's schema."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fv.cli.common import add_noun, parse_bool, parse_q_list, tokenizer_for
from fv.errors import FVError, UsageError
from fv.parity.preflight import EXIT_CODE
from fv.runtime.trials import FixedTrials, validate_trials


def cmd_make_trials(a: argparse.Namespace) -> int:
    from fv.model.tokenizers import tokenizer_prepends_bos
    from fv.runtime.trials import make_icl_trials, make_relation_trials, save_trials

    if bool(a.dataset) == bool(a.relation_csv):
        raise UsageError("give exactly one of --dataset (an ICL JSON) or --relation-csv.")
    tok = tokenizer_for(a.tokenizer)
    bos = tokenizer_prepends_bos(tok) if a.model_prepend_bos is None else a.model_prepend_bos
    if a.dataset:
        raw = make_icl_trials(a.dataset, tok, a.n_trials, a.n_shots, a.seed, a.test_split, model_name_for_tokenizer=a.tokenizer or "tiny-llama",
                              model_prepend_bos=bos, prepend_bos_token_used=a.prepend_bos_token_used)
    else:
        raw = make_relation_trials(a.relation_csv, tok, a.n_trials_per_q, a.n_demos, a.seed, parse_q_list(a.q_list),
                                   model_name_for_tokenizer=a.tokenizer or "tiny-llama", model_prepend_bos=bos,
                                   prepend_bos_token_used=a.prepend_bos_token_used)
        for s in raw["meta"]["skipped_qs"]:
            print(f"skipped {s['q_id']}: {s['n_rows']} rows, {s['reason']}", file=sys.stderr)
    if _preflight_refuses(getattr(a, "cli_name", "trials make"), FixedTrials(Path(a.out), raw, validate_trials(raw, str(a.out)), ""), tok,
                          a.tokenizer or "tiny-llama"):
        return EXIT_CODE  # nothing written
    save_trials(a.out, raw)
    print(f"wrote {a.out}: {len(raw['trials'])} trials")
    return 0


def cmd_verify_trials(a: argparse.Namespace) -> int:
    from fv.runtime.trials import load_trials, verify_token_ids

    ft = load_trials(a.path)
    spec = a.tokenizer or ft.meta.get("model_name_for_tokenizer") or None
    try:
        tok = tokenizer_for(spec)
    except FVError as exc:
        if a.tokenizer or not spec:
            raise
        raise FVError(f"{ft.path}: its meta.model_name_for_tokenizer does not resolve on this machine ({exc}) "
                      "Pass --tokenizer with a model or tokenizer folder, or a hub id in the local cache.") from None
    bad = verify_token_ids(ft, tok, a.verify_n)
    n = len(ft.subset(a.verify_n))
    for m in bad:
        print(f"MISMATCH {m}")
    print(f"{ft.path}: {n} trials checked, {len(bad)} token-id mismatches (mismatch_count={len(bad)})")
    if bad:  # the target ids against ids(prompt + target) minus ids(prompt), causes in words (as M0's test_target_ids)
        from fv.runtime.trials import check_target_ids
        from fv.runtime.trials import target_summary as summary

        problems = check_target_ids(ft.subset(a.verify_n), tok, ft.raw.get("trials"))
        if problems:
            print(summary(problems))
    from fv.parity.boundaries import boundary_summary

    print(boundary_summary(ft, tok, a.verify_n))
    from fv.parity.pattern import lone_metaspace_summary

    print(lone_metaspace_summary(ft, tok, a.verify_n))  # SentencePiece's standalone space tokens, by slot
    from fv.parity.preflight import TRIALS_TOKENIZER, trials_findings

    # the preflights in the words a pytest session stops with: listed here; token-id mismatches exit 1 as above,
    # any other refusal exits 4 with its line on stderr
    findings = trials_findings(ft, tok, spec or "tiny-llama")
    for f in findings:
        print(f"{'REFUSED' if f.refuse else 'WARNING'} {f.text()}")
    if bad:
        return 1
    refusal = next((f for f in findings if f.refuse and f.check != TRIALS_TOKENIZER), None)
    if refusal is not None:
        print(f"fv {getattr(a, 'cli_name', 'trials verify')}: error: {refusal.text()}", file=sys.stderr)
        return EXIT_CODE
    return 0


def _preflight_refuses(command: str, ft, tok, tokenizer_name: str) -> bool:
    """The BOS-text preflights (fv.parity.preflight) on a file about to be written, in the words a pytest session
    stops with: a refusal prints ``fv COMMAND: error: preflight ...`` (the command then exits 4 and writes nothing),
    a warning ``fv COMMAND: warning: preflight ...``."""
    from fv.parity.preflight import TRIALS_TOKENIZER, trials_findings

    findings = [f for f in trials_findings(ft, tok, tokenizer_name) if f.check != TRIALS_TOKENIZER]
    refusals = [f for f in findings if f.refuse]
    for f in refusals[:1] or findings:
        print(f"fv {command}: {'error' if f.refuse else 'warning'}: {f.text()}", file=sys.stderr)
    return bool(refusals)


def register(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - argparse exposes no public type
    verbs = add_noun(sub, "trials", help="make | verify: fixed-trials files (M0)",
                     description="Fixed-trials files in the user's schema: made from an ICL dataset or a relation CSV, or "
                                 "checked against a tokenizer. Earlier spellings: fv make-trials, fv verify-trials.")
    m = verbs.add_parser("make", help="make a fixed-trials file (M0; alias: fv make-trials)", description="Make a fixed-trials JSON in the user's schema, from an ICL dataset or a relation CSV (q-wise).")
    m.add_argument("--dataset", "--dataset_json", dest="dataset", help="ICL dataset: a JSON list of {input, output}")
    m.add_argument("--relation-csv", "--relation_csv", dest="relation_csv", help="relation CSV with columns id, ex_A, ex_B")
    m.add_argument("--out", "--out_path", dest="out", required=True, help="where to write the trials JSON")
    m.add_argument("--n-trials", "--n_trials", dest="n_trials", type=int, default=10, help="trials (ICL; default 10)")
    m.add_argument("--n-shots", "--n_shots", dest="n_shots", type=int, default=10, help="demonstrations per prompt (ICL; default 10)")
    m.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    m.add_argument("--test-split", "--test_split", dest="test_split", type=float, default=0.3, help="test fraction of the split (default 0.3)")
    m.add_argument("--tokenizer", "--model_name_for_tokenizer", dest="tokenizer", default=None, help="model or tokenizer folder, Hugging Face hub id in the local cache, cache snapshot path, or a tiny model name (default tiny-llama)")
    m.add_argument("--model-prepend-bos", "--model_prepend_bos", dest="model_prepend_bos", type=parse_bool, default=None, help="true|false: the tokenizer adds BOS itself (default: detected)")
    m.add_argument("--prepend-bos-token-used", "--prepend_bos_token_used", dest="prepend_bos_token_used", type=parse_bool, default=False, help="true|false: write the reference's BOS text <|endoftext|> into prompts (default false): true for the upstream reference on a tokenizer that adds no BOS (GPT-2, GPT-J, GPT-NeoX, OLMo), false on one that adds its own (Llama, Gemma) and for a fork that never writes it; docs/preflight.md")
    m.add_argument("--q-list", "--q_list", dest="q_list", default=None, help="relation: comma-separated q ids, or all (default all)")
    m.add_argument("--n-trials-per-q", "--n_trials_per_q", dest="n_trials_per_q", type=int, default=25, help="relation: trials per q (default 25)")
    m.add_argument("--n-demos", "--n_demos", dest="n_demos", type=int, default=9, help="relation: demonstrations per prompt (default 9)")
    m.set_defaults(func=cmd_make_trials)

    v = verbs.add_parser("verify", help="recompute a trials file's token ids (M0; alias: fv verify-trials)", description="Recompute every trial's answer ids with a tokenizer and list each disagreement (exit 1 on any); count the tokens that straddle two prompt parts; exit 4 where a preflight refuses the file (docs/preflight.md).")
    v.add_argument("path", help="fixed-trials JSON")
    v.add_argument("--tokenizer", "--model_name_for_tokenizer", "--tokenizer_name", dest="tokenizer", default=None, help="model or tokenizer folder, Hugging Face hub id in the local cache, cache snapshot path, or a tiny model name (default: the file's meta.model_name_for_tokenizer)")
    v.add_argument("--verify-n", "--verify_n", dest="verify_n", type=int, default=None, help="check only the first N trials")
    v.set_defaults(func=cmd_verify_trials)
