"""``fv model build`` (earlier ``fv build-model``): a random Llama-shaped model folder, for tests and GPU checks."""

from __future__ import annotations

import argparse

from fv.cli.common import add_device_arg, add_dtype_arg, add_noun


def cmd_build_model(a: argparse.Namespace) -> int:
    from fv.model.loading import pick_device
    from fv.model.tiny import TINY_MODELS, build_tiny_model

    spec = TINY_MODELS["tiny-llama3tok" if a.tokenizer == "llama3" else "tiny-llama"]
    shape = {"n_layers": a.n_layers, "d_model": a.d_model, "n_heads": a.n_heads, "n_kv_heads": a.n_kv_heads, "d_mlp": a.d_mlp}
    path = build_tiny_model(spec, a.out, shape, init=a.init, device=pick_device(a.device), dtype=a.dtype)
    print(f"wrote {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - argparse exposes no public type
    verbs = add_noun(sub, "model", help="build: a random Llama-shaped model folder (tests, GPU checks)",
                     description="Model folders fv makes itself. Earlier spelling: fv build-model.")
    b = verbs.add_parser("build", help="build a random Llama-shaped model folder (tests, GPU checks; alias: fv build-model)",
                         description="Write a randomly initialised Llama model with the given shape and a tokenizer (the tiny BPE or the real Llama 3 one).")
    b.add_argument("--out", required=True, help="model folder to write; keep 'llama' in its name")
    b.add_argument("--tokenizer", choices=("fixture", "llama3"), default="llama3", help="the tiny byte-level BPE (fixture) or the real Llama 3 tokenizer (default)")
    b.add_argument("--n-layers", dest="n_layers", type=int, default=32, help="decoder layers (default 32, as Llama-3.1-8B)")
    b.add_argument("--d-model", dest="d_model", type=int, default=4096, help="model width (default 4096)")
    b.add_argument("--n-heads", dest="n_heads", type=int, default=32, help="attention heads (default 32)")
    b.add_argument("--n-kv-heads", dest="n_kv_heads", type=int, default=8, help="key/value heads (default 8)")
    b.add_argument("--d-mlp", dest="d_mlp", type=int, default=14336, help="MLP width (default 14336)")
    b.add_argument("--init", choices=("numpy", "torch"), default="torch", help="numpy: the byte-stable recipe of the tiny models; torch: fast random init (large models)")
    add_device_arg(b, default="cpu", what="where --init torch draws the weights (cuda is much faster for large models)")
    add_dtype_arg(b, default="bfloat16", what="the saved weights' dtype with --init torch", auto="float32")
    b.set_defaults(func=cmd_build_model)
