"""Where a numeric mismatch falls, in words: which trials, layers, heads and slots differ, with counts.

A single worst element rarely says why two sides part; the shape of the set of differing elements often does
("all 21 multi-token word slots, no others" points at the averaging of multi-token words). Each tensor stage
names its axes; this module counts the indices of each axis that hold at least one mismatch and relates the
differing slots to the slots where some word spans several tokens.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


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


def describe(dims: Sequence[str] | None, bad: torch.Tensor, slot_labels: Sequence[str] | None = None,
             multi_token_slots: Sequence[int] | None = None, trial_keys: Sequence[str] | None = None,
             lone_metaspace_slots: Sequence[int] | None = None) -> str:
    """One line: per axis (named by ``dims``, the stage's dims in ``fv.parity.registry``), how many of its indices
    differ and which; slots named by label and compared with the
    multi-token word slots and, when given, the slots a lone SentencePiece ``▁`` token is averaged into
    (``lone_metaspace_slots``). Empty when nothing differs."""
    if not bool(bad.any()):
        return ""
    names = tuple(dims or ())
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
            if lone_metaspace_slots:
                lone = sorted(set(lone_metaspace_slots) & set(idx))
                text += (f"; {len(lone)} of them hold a lone '\u2581' token ({_list([str(i) for i in lone])})" if lone
                         else "; none of them holds a lone '\u2581' token")
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


def lone_metaspace_slots(trials: Any, tokenizer: Any, prepend_bos: bool, dummy: Sequence[tuple[int, str]]) -> dict:
    """Per trial key and side, the lone SentencePiece ``▁`` tokens of its slot map
    (``fv.runtime.slots.lone_metaspace_tokens``: position, label, slot). Sides without one are left out."""
    from fv.runtime.slots import lone_metaspace_tokens

    out: dict = {}
    for tr in trials:
        sides = {side: found for side, pd_ in (("clean", tr.prompt_data_clean), ("corrupted", tr.prompt_data_corrupted))
                 if (found := lone_metaspace_tokens(pd_, tokenizer, prepend_bos, dummy))}
        if sides:
            out[f"{tr.trial_id}:{tr.trial_idx}"] = sides
    return out


def lone_metaspace_slot_indices(trials: Any, tokenizer: Any, prepend_bos: bool, dummy: Sequence[tuple[int, str]]) -> list[int]:
    """The slots (indices of the mean activations' slot axis) some trial's lone ``▁`` token is averaged into, for
    ``describe`` to name them in a mismatch's pattern. Empty for byte-level tokenizers, and where they cannot be
    counted (a pattern line never stops a gate)."""
    try:
        found = lone_metaspace_slots(trials, tokenizer, prepend_bos, dummy)
    except Exception:  # a report detail, never the verdict
        return []
    return sorted({int(e["slot"]) for sides in found.values() for es in sides.values() for e in es if e["slot"] is not None})


def lone_metaspace_note(found: dict, n_trials: int) -> str:
    """One line naming where lone ``▁`` tokens sit in the slot maps (``lone_metaspace_slots``'s answer):
    how many, in how many trials, and per kind of label the positions and slots of the first trial holding it."""
    entries = [(key, side, e) for key, sides in found.items() for side, es in sides.items() for e in es]
    if not entries:
        return f"lone '\u2581' tokens in the slot maps: 0 in {n_trials} trials"
    by_label: dict[str, list[str]] = {}
    for key, side, e in entries:
        kind = e["label"]
        if kind not in by_label:
            by_label[kind] = [f"trial {key} {side} position {e['position']} -> slot {e['slot']}"]
    slots = sorted({e["slot"] for _, _, e in entries if e["slot"] is not None})
    shown = _list([f"{lab} ({where[0]})" for lab, where in by_label.items()], 8)
    return (f"lone '\u2581' tokens in the slot maps: {len(entries)} in {len(found)} of {n_trials} trials, averaged into "
            f"slots {_list([str(s) for s in slots], 12)}; labels: {shown}")


def lone_metaspace_summary(trials: Any, tokenizer: Any, verify_n: int | None = None) -> str:
    """``lone_metaspace_note`` for a fixed-trials file (its first ``verify_n`` trials), with the dummy slots its
    template and shots give; for ``fv trials verify`` beside the boundary-token line. Never raises."""
    from fv.model.tokenizers import tokenizer_prepends_bos
    from fv.runtime.prompts import has_bos_text
    from fv.runtime.slots import dummy_labels

    subset = trials.subset(verify_n)
    try:
        first = subset[0]
        bos = tokenizer_prepends_bos(tokenizer)
        dummy = dummy_labels(len(first.prompt_data_clean["examples"]), tokenizer, bos, trials.meta.get("prefixes"),
                             trials.meta.get("separators"), bos_text=has_bos_text(first.prompt_data_clean))
        return lone_metaspace_note(lone_metaspace_slots(subset, tokenizer, bos, dummy), len(subset))
    except Exception as exc:  # a report line: it never stops the command that prints it
        return f"lone '\u2581' tokens in the slot maps: not counted ({type(exc).__name__}: {exc})"
