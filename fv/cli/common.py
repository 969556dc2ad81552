"""Arguments and helpers shared by several commands."""

from __future__ import annotations

import argparse
from typing import Any


def parse_bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("true", "1", "yes", "y"):
        return True
    if v in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, found {s!r}")


def parse_q_list(spec: str | None) -> list[str] | None:
    """``Q1,Q2`` as a list; ``None`` or ``all`` as None (every q)."""
    return None if spec in (None, "", "all") else [q.strip() for q in spec.split(",") if q.strip()]


def tokenizer_for(spec: str | None) -> Any:
    """The tokenizer of a model or tokenizer folder, a hub id in the local cache, a cache snapshot path or a tiny
    model name (default: the embedded tiny model)."""
    from fv.model.resolve import resolve_tokenizer_path
    from fv.model.tokenizers import load_tokenizer

    return load_tokenizer(resolve_tokenizer_path(spec))


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "--model_name", dest="model", default=None,
                   help="local model folder, Hugging Face hub id in the local cache (works offline), cache snapshot path, or a tiny model: tiny-llama, tiny-llama3tok, or one per family: tiny-gpt2, "
                        "tiny-gpt-j, tiny-gpt-neox, tiny-llama-mha, tiny-gemma, tiny-olmo, tiny-mistral, tiny-qwen2, tiny-gemma2, tiny-gemma3, "
                        "tiny-phi3, tiny-olmo2 (default: the embedded tiny-llama)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto: cuda when there is one)")
    p.add_argument("--dtype", default="auto",
                   help="float32, bfloat16, float16 or auto (default auto: the dtype the reference's loader would use; "
                        "see docs/loading.md)")
    p.add_argument("--attn-implementation", dest="attn_implementation", default="auto",
                   help="eager, sdpa, ... or auto (default auto: the transformers default, as the reference's loader)")


def add_reference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--src-root", dest="src_root", default=None, help="the reference's src/ (else $FV_SRC_ROOT, else ./src)")
    p.add_argument("--baukit-root", dest="baukit_root", default=None,
                   help="folder holding baukit/nethook.py when the baukit package does not import (else $FV_BAUKIT_ROOT)")
    p.add_argument("--src-compat", dest="src_compat", action="store_true",
                   help="apply the reference's FV addition to tensor layer outputs too (its injection is a no-op on "
                        "transformers 5.x otherwise); recorded in every report")


def add_stage_args(p: argparse.ArgumentParser) -> None:
    """The stage parameters `fv run` and `fv reference` share: one spelling (and the reference scripts' own
    spelling) and one default each, so the two sides of a parity comparison are asked for the same thing."""
    p.add_argument("--max-trials", "--max_trials", dest="max_trials", type=int, default=None, help="use only the first N trials")
    p.add_argument("--n-top-heads", "--n_top_heads", dest="n_top_heads", type=int, default=10, help="heads in the FV (default 10)")
    p.add_argument("--edit-layer", "--edit_layer", dest="edit_layer", type=int, default=9, help="FV injection layer (default 9)")


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars and no log lines on stderr")
