"""One place where two sides part: the stage, the file a dump holds it in, the key (an index, a JSON path), the
trial it falls in (``"<trial_id>:<trial_idx>"``, or None) and both values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Mismatch:
    stage: str
    file: str
    key: str
    trial_key: str | None
    src: Any
    fv: Any

    def __str__(self) -> str:
        where = f" trial {self.trial_key}" if self.trial_key else ""
        return f"[{self.stage}]{where} {self.file}:{self.key}: src={_short(self.src)} fv={_short(self.fv)}"

    def as_dict(self) -> dict:
        tid, tidx = (self.trial_key.rsplit(":", 1) if self.trial_key else (None, None))
        return {"stage": self.stage, "file": self.file, "key": self.key,
                "trial_id": tid, "trial_idx": None if tidx is None else int(tidx),
                "src": _jsonable(self.src), "fv": _jsonable(self.fv)}


def _short(v: Any, n: int = 120) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.tolist() if v.numel() <= 16 else f"tensor{tuple(v.shape)}"
    return v
