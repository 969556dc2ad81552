"""Arguments and helpers shared by several commands."""

from __future__ import annotations

import argparse
import os
from typing import Any

from fv.errors import EXIT_USAGE


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one stderr line: what was expected and what was found (argparse's words, the
    choices included), and where the help is; exit 2 (``fv.errors.EXIT_USAGE``), as every usage error."""

    def error(self, message: str):  # argparse's signature: never returns
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def add_noun(sub: argparse._SubParsersAction, name: str, help: str, description: str) -> argparse._SubParsersAction:  # noqa: SLF001
    """A command noun (``fv trials``), whose verbs the caller adds to the returned subparsers. A verb is required:
    ``fv trials`` alone, or with a verb it does not have, is a one-line usage error naming the verbs (exit 2)."""
    p = sub.add_parser(name, help=help, description=description)
    return p.add_subparsers(title="verbs", required=True)


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


MODEL_HELP = ("local model folder, Hugging Face hub id in the local cache (works offline), cache snapshot path, or a tiny "
              "model: tiny-llama, tiny-llama3tok, tiny-llama-fv (trained: docs/trained_model.md), or one per family: tiny-gpt2, tiny-gpt-j, tiny-gpt-neox, tiny-llama-mha, "
              "tiny-gemma, tiny-olmo, tiny-mistral, tiny-qwen2, tiny-gemma2, tiny-gemma3, tiny-phi3, tiny-olmo2 (default: the "
              "embedded tiny-llama; in fv runtime run the trained tiny-llama-fv, where function vectors work)")


def add_model_args(p: argparse.ArgumentParser, dtype: str = "auto", attn: bool = True, model_note: str = "") -> None:
    """``--model``, ``--device``, ``--dtype`` and ``--attn-implementation``: the one declaration of the options that
    pick and load a model, with one help text and one default each, in every command that loads one. ``dtype``: a
    command whose pipeline has another default (``fv relation run``: float32); ``attn=False``: a command whose
    loader takes no attention implementation (it is then not offered); ``model_note``: what else ``--model`` may
    name there."""
    p.add_argument("--model", "--model_name", dest="model", default=None,
                   help=MODEL_HELP + (f"; {model_note}" if model_note else ""))
    add_device_arg(p)
    add_dtype_arg(p, default=dtype)
    if attn:
        p.add_argument("--attn-implementation", dest="attn_implementation", default="auto",
                       help="eager, sdpa, ... or auto (default auto: the transformers default, as the reference's loader)")


def add_device_arg(p: argparse.ArgumentParser, default: str = "auto", what: str = "") -> None:
    """``--device``; ``default`` and ``what`` for a command that puts something else than a loaded model there
    (``fv model build``: where the random weights are drawn)."""
    p.add_argument("--device", default=default,
                   help=(f"{what}: " if what else "") + f"cpu, cuda, cuda:N, or auto: cuda when there is one (default {default})")


def add_dtype_arg(p: argparse.ArgumentParser, default: str = "auto", what: str = "",
                  auto: str = "the dtype the reference's loader would use, docs/loading.md") -> None:
    """``--dtype``; ``default``, ``what`` and the meaning of ``auto`` for a command that needs others."""
    p.add_argument("--dtype", default=default,
                   help=(f"{what}: " if what else "") + f"float32, bfloat16, float16, or auto: {auto} (default {default})")


def add_reference_args(p: argparse.ArgumentParser, compat: bool = True) -> None:
    """``--src-root``, ``--baukit-root`` and (``compat``) ``--src-compat``: where the reference is, and how it runs."""
    p.add_argument("--src-root", dest="src_root", default=None, help="the reference's src/ (else $FV_SRC_ROOT, else ./src)")
    p.add_argument("--baukit-root", dest="baukit_root", default=None,
                   help="folder holding baukit/nethook.py when the baukit package does not import (else $FV_BAUKIT_ROOT)")
    if not compat:
        return
    p.add_argument("--src-compat", dest="src_compat", action="store_true",
                   help="apply the reference's FV addition to tensor layer outputs too (its injection is a no-op on "
                        "transformers 5.x otherwise); recorded in every report")


def add_src_python_arg(p: argparse.ArgumentParser) -> None:
    """``--src-python PATH``: the interpreter of the reference's own process (the user's own environment)."""
    p.add_argument("--src-python", dest="src_python", default=os.environ.get("FV_SRC_PYTHON") or None,
                   help="the Python the reference's own process runs with (the own mode): your environment as it is "
                        "(its transformers, its bitsandbytes), fv staying in its own; default $FV_SRC_PYTHON, else fv's")


def add_stage_args(p: argparse.ArgumentParser) -> None:
    """The stage parameters `fv run` and `fv reference` share: one spelling (and the reference scripts' own
    spelling) and one default each, so the two sides of a parity comparison are asked for the same thing."""
    p.add_argument("--max-trials", "--max_trials", dest="max_trials", type=int, default=None, help="use only the first N trials")
    p.add_argument("--n-top-heads", "--n_top_heads", dest="n_top_heads", type=int, default=10, help="heads in the FV (default 10)")
    p.add_argument("--edit-layer", "--edit_layer", dest="edit_layer", type=int, default=None,
                   help="FV injection layer (default: the model's, fv/model/default_inputs.py: 9, or a third of the depth where 9 does not fit; 2 on tiny-llama-fv)")


def edit_layer_of(a: argparse.Namespace, lm) -> int:
    """``--edit-layer``, else the loaded model's default edit layer (``fv.model.default_inputs``)."""
    from fv.model.default_inputs import default_edit_layer

    return a.edit_layer if a.edit_layer is not None else default_edit_layer(lm.path, lm.info.n_layers)


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars and no log lines on stderr")


LAYOUTS = ("fv", "my_fv_project")


def add_layout_arg(p: argparse.ArgumentParser, where: str) -> None:
    """``--layout fv|my_fv_project``: fv's files only, or also a user's layout beside them (fv.ports)."""
    p.add_argument("--layout", choices=LAYOUTS, default="fv",
                   help=f"fv: fv's files only (default); my_fv_project: also sunsikham/my_fv_project's files under "
                        f"{where}/artifacts/ (aie_scores.csv, top_heads.json, step6/layer_<L>/..., docs/ports.md), "
                        "read by their own loaders and plots; what fv does not compute is left out and named in "
                        "artifacts/fv_layout.json")
