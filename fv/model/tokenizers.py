"""Loading a tokenizer, and the one fact about it every stage needs: whether it puts a BOS token first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fv import compat
from fv.errors import FVError


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer in ``path`` (a model folder or a tokenizer-only folder), as the reference loads it. A folder
    written by a newer release than the installed one (transformers 5.x's ``TokenizersBackend`` on 4.x, pair merges
    on tokenizers 0.19) stops in one line naming ``python -m fv.compat tokenizer DIR`` (``fv.compat``)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:
        if Path(path).is_dir():  # files a newer release wrote: one line naming the rewrite that every release reads
            compat.check_tokenizer_folder(path)
        raise FVError(f"cannot load a tokenizer from {path}: {exc}. Give a model folder, a tokenizer folder, a cached hub id or a tiny model name.") from exc


def tokenizer_prepends_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts its BOS token first on its own (then no BOS text goes into prompts)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("a").input_ids
    return bos is not None and len(ids) > 0 and ids[0] == bos
