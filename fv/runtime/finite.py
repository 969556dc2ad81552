"""Non-finite values stop a run: a stage whose output holds a NaN or an infinity (a model whose activations
overflow its dtype, fp16's 65504 most often) is named with the first place it appears, and nothing of that
stage is written. ``fv runtime run``, ``fv relation`` and ``fv universal`` call ``require_finite`` where mean
activations, indirect effects, the FV and the evaluation's logits are produced; the parity engine uses
``first_nonfinite`` to say where a side's values stop being numbers."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from fv.errors import FVError


class NonFiniteError(FVError):
    """A stage produced a NaN or an infinity; ``stage`` and ``where`` (e.g. "layer 3, head 1, slot 2") say where."""

    def __init__(self, message: str, stage: str = "", where: str = "") -> None:
        super().__init__(message)
        self.stage = stage
        self.where = where


def nonfinite_word(x: float) -> str:
    """How a non-finite value is named in a message: "NaN", "+inf" or "-inf"."""
    return "NaN" if math.isnan(x) else "+inf" if x > 0 else "-inf"


def describe_index(index: Sequence[int], dims: Sequence[str], labels: dict[str, Sequence[Any]] | None = None) -> str:
    """``(3, 1, 2)`` with dims ``(layer, head, slot)`` -> "layer 3, head 1, slot 2"; a dim with labels (trial keys)
    is named by its label; trailing element dims (``head_dim``, ``d_model``) are left out when others name it."""
    parts = []
    for i, (d, x) in enumerate(zip(dims, index)):
        if d in ("head_dim", "d_model", "element") and i > 0:
            continue
        lab = (labels or {}).get(d)
        parts.append(f"{d} {lab[x]}" if lab is not None and x < len(lab) else f"{d} {x}")
    return ", ".join(parts) or "the value"


def first_nonfinite(t: torch.Tensor) -> tuple[tuple[int, ...], float, int] | None:
    """``(index, value, count)`` of a tensor's first non-finite element in index (C) order, None when all are finite."""
    if not isinstance(t, torch.Tensor) or not t.numel() or not (t.is_floating_point() or t.is_complex()):
        return None
    bad = ~torch.isfinite(t.detach())
    n = int(bad.sum())
    if not n:
        return None
    pos = int(torch.nonzero(bad.reshape(-1))[0])
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(pos), t.shape)) if t.ndim else ()
    return idx, float(t.detach().reshape(-1)[pos]), n


def nonfinite_message(stage: str, t: torch.Tensor, dims: Sequence[str], labels: dict[str, Sequence[Any]] | None = None
                      ) -> tuple[str, str] | None:
    """(one line, where) for a tensor holding a NaN or an infinity; None when it is finite."""
    hit = first_nonfinite(t)
    if hit is None:
        return None
    idx, value, n = hit
    where = describe_index(idx, dims, labels)
    return (f"{stage}: {nonfinite_word(value)} at {where} (index {list(idx)}; {n} of {t.numel()} values are not finite); "
            f"the model's activations overflow or are undefined in its dtype (try --dtype float32). "
            f"Nothing of this stage was written."), where


def require_finite(stage: str, tensor: torch.Tensor, dims: Sequence[str], labels: dict[str, Sequence[Any]] | None = None) -> None:
    """Raise ``NonFiniteError`` (one line naming the stage and the first layer/head/slot/trial) when ``tensor``
    holds a NaN or an infinity."""
    msg = nonfinite_message(stage, tensor, dims, labels)
    if msg is not None:
        raise NonFiniteError(msg[0], stage, msg[1])


_EVAL_FLOATS = ("logit_base", "logit_with", "logprob_base", "logprob_with", "p_base", "p_with")


def require_finite_rows(stage: str, rows: Sequence[dict], layer: int) -> None:
    """The evaluation rows of one edit layer: every target logit, log-probability and probability finite."""
    for r in rows:
        for k in _EVAL_FLOATS:
            v = r.get(k)
            if isinstance(v, float) and not math.isfinite(v):
                where = f"layer {layer}, trial ({r.get('trial_id')}, {r.get('trial_idx')}), prompt set {r.get('prompt_set')}"
                raise NonFiniteError(
                    f"{stage}: {k} is {nonfinite_word(v)} at edit layer {layer}, trial ({r.get('trial_id')}, {r.get('trial_idx')}), "
                    f"prompt set {r.get('prompt_set')}; the model's logits overflow or are undefined in its dtype "
                    f"(try --dtype float32). Nothing of this stage was written.", stage, where)
