"""The rules of a scored prompt's fields (the injection stage's records: ``top_ids`` ranked by ``top_logits``,
``pred_id``, ``logits_sha256``), handed to ``fv.parity.json_diff.walk_diffs`` by the comparer of ``"scores"`` values.

Under the exact tolerance every field is compared as it stands. Under a tolerance, the hash of the logits proves
bit-identity only (the numbers beside it speak), and token ids ranked by logits may trade ranks where the src's
logits are within the tolerance of each other: near-tied logits can swap on another CPU.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

from fv.parity.json_diff import FieldRule
from fv.parity.tolerance import Tolerance


def logits_hash(src: dict, fv: dict, key: str, tol: Tolerance, scales: dict, path: str
                ) -> Iterator[tuple[str, Any, Any, float]] | None:
    """``logits_sha256``: compared exactly under the exact tolerance (None: as any field), skipped under another."""
    return None if tol.is_exact else iter(())


def ranked_ids(src: dict, fv: dict, key: str, tol: Tolerance, scales: dict, path: str
               ) -> Iterator[tuple[str, Any, Any, float]] | None:
    """``top_ids`` / ``pred_id`` under a tolerance, where the record holds ``top_logits``: an id at rank i agrees
    when it is the src's id there, or when the src ranks it too (or it enters at the last rank) with a logit within
    the tolerance of the src's logit at rank i; any other change of the ranking is a mismatch. None (compared as
    any field) under the exact tolerance or without the ranking beside it."""
    if tol.is_exact or "top_logits" not in src or "top_ids" not in src:
        return None
    return _ranked_id_diffs(src, fv, key, tol, scales.get("top_logits", 0.0), path)


def _ranked_id_diffs(src: dict, fv: dict, key: str, tol: Tolerance, scale: float, path: str
                     ) -> Iterator[tuple[str, Any, Any, float]]:
    ids, logits = list(src.get("top_ids") or []), list(src.get("top_logits") or [])
    mine = fv.get(key)
    pairs = [(0, src.get(key), mine)] if key == "pred_id" else \
        [(i, a, b) for i, (a, b) in enumerate(zip(src[key], mine))] if isinstance(mine, list) else []
    if key == "top_ids" and (not isinstance(mine, list) or len(mine) != len(ids)):
        yield path, src[key], mine, math.inf
        return
    fv_logits = list(fv.get("top_logits") or [])
    for i, a, b in pairs:
        if a == b:
            continue
        if i >= len(logits):
            yield path, a, b, math.inf
            continue
        if b in ids:
            other = logits[ids.index(b)]
        elif i == len(ids) - 1 and i < len(fv_logits):  # a new id entering at the last rank: its logit is fv's
            other = fv_logits[i]
        else:
            other = math.inf
        if not abs(other - logits[i]) <= tol.bound(logits[i], scale):
            yield (f"{path}[{i}]" if key == "top_ids" else path), a, b, math.inf


SCORE_RULES: dict[str, FieldRule] = {"logits_sha256": logits_hash, "top_ids": ranked_ids, "pred_id": ranked_ids}
