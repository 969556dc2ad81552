"""Where a numeric mismatch falls, in words: which trials, layers, heads and slots differ, with counts.

A single worst element rarely says why two sides part; the shape of the set of differing elements often does
("all 21 multi-token word slots, no others" points at the averaging of multi-token words). Each tensor stage
names its axes; this module counts the indices of each axis that hold at least one mismatch and relates the
differing slots to the slots where some word spans several tokens.
"""

from __future__ import annotations

from typing import Sequence

import torch

# the axes of each tensor stage, as the artifacts lay them out
AXES = {
    "mean_activations": ("layer", "head", "slot", "head_dim"),
    "indirect_effect": ("trial", "layer", "head"),
    "fv": ("d_model",),
}


def differing(bad: torch.Tensor) -> list[list[int]]:
    """For each axis of the boolean mismatch mask, the sorted indices that hold at least one mismatch."""
    if bad.ndim == 0:
        return []
    out = []
    for axis in range(bad.ndim):
        other = tuple(a for a in range(bad.ndim) if a != axis)
        hit = bad.any(dim=other) if other else bad
        out.append([int(i) for i in torch.nonzero(hit).reshape(-1)])
    return out


def _list(items: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def describe(stage: str, bad: torch.Tensor, slot_labels: Sequence[str] | None = None,
             multi_token_slots: Sequence[int] | None = None, trial_keys: Sequence[str] | None = None) -> str:
    """One line: per axis, how many of its indices differ and which; slots named by label and compared with the
    multi-token word slots. Empty when nothing differs."""
    if not bool(bad.any()):
        return ""
    names = AXES.get(stage, tuple(f"axis{i}" for i in range(bad.ndim)))
    if len(names) != bad.ndim:
        names = tuple(f"axis{i}" for i in range(bad.ndim))
    parts = []
    for name, idx, size in zip(names, differing(bad), bad.shape):
        if name == "head_dim":
            continue
        if name == "slot" and slot_labels is not None:
            labels = [f"{i} {slot_labels[i]}" if i < len(slot_labels) else str(i) for i in idx]
            text = f"{len(idx)} of {size} slots ({_list(labels)})"
            if multi_token_slots is not None:
                multi = set(multi_token_slots)
                inside = [i for i in idx if i in multi]
                others = [i for i in idx if i not in multi]
                if inside and not others and len(inside) == len(multi):
                    text += f": exactly the {len(multi)} multi-token word slots, no others"
                elif inside:
                    text += f": {len(inside)} of the {len(multi)} multi-token word slots and {len(others)} others"
                elif multi:
                    text += f": none of the {len(multi)} multi-token word slots"
            parts.append(text)
        elif name == "trial" and trial_keys is not None:
            keys = [trial_keys[i] if i < len(trial_keys) else str(i) for i in idx]
            parts.append(("all " if len(idx) == size else "") + f"{len(idx)} of {size} trials ({_list(keys)})")
        else:
            which = "all" if len(idx) == size else _list([str(i) for i in idx], 10)
            parts.append(f"{len(idx)} of {size} {name}s ({which})")
    n, total = int(bad.sum()), bad.numel()
    return f"{n} of {total} elements differ, in " + "; ".join(parts)


def multi_token_slots(slot_value: dict) -> list[int]:
    """Slots where, in some trial and side, a word spans several tokens (from a slot-stage value)."""
    out: set[int] = set()
    for entry in (slot_value.get("trials") or {}).values():
        for side in entry.values():
            idx_map = side.get("idx_map", {})
            for first, _last in side.get("idx_avg", {}).values():
                slot = idx_map.get(str(first), idx_map.get(first))
                if slot is not None:
                    out.add(int(slot))
    return sorted(out)
