"""Slots: where each token of a prompt is averaged. The dummy prompt's labelled positions are the slots
(``dummy_labels``); ``slot_maps`` pairs a real prompt's positions with them (``idx_map``: position -> slot) and
spans each multi-token demo word (``idx_avg``: label -> first and last position), exactly as the reference's
prompt utilities pair them; ``full_idx_map`` sends every token of such a
word to its slot. ``lone_metaspace_tokens`` names the SentencePiece ``▁`` tokens that take a slot of their own.
"""

from __future__ import annotations

from typing import Any, Sequence

from fv.runtime.prompts import METASPACE, TokenLabel, make_prompt_data, token_meta_labels


def dummy_labels(
    n_examples: int,
    tokenizer: Any,
    model_prepend_bos: bool,
    prefixes: dict | None = None,
    separators: dict | None = None,
    bos_text: bool | None = None,
) -> list[tuple[int, str]]:
    """Labels of a prompt whose every word is the single token ``a``: the slot layout activations are averaged into.

    ``bos_text``: whether the dummy prompt carries the BOS text, as the prompts it lays out do (pass
    ``has_bos_text`` of them). None takes the upstream reference's rule, BOS text exactly when the tokenizer adds
    no BOS; a fork of it that never prepends it needs trials without it, and then the dummy prompt lacks it too.
    """
    data = make_prompt_data(
        [("a", "a")] * n_examples, ("a", "a"), prefixes=prefixes, separators=separators,
        prepend_bos_token=(not model_prepend_bos) if bos_text is None else bos_text,
    )
    labels, _ = token_meta_labels(data, tokenizer, prepend_bos=model_prepend_bos)
    return [(pos, lab) for pos, _, lab in labels]


def slot_maps(token_labels: Sequence[TokenLabel], gt_labels: Sequence[tuple[int, str]]) -> tuple[dict[int, int], dict[str, tuple[int, int]]]:
    """``idx_map`` (token position -> slot) and ``idx_avg`` (label -> first and last position of a multi-token word).

    Only ``demo``-labelled tokens can span several positions. The positions that repeat a label are dropped
    from ``idx_map``; the rest are paired in order with the dummy slots. ``idx_avg`` is ordered by label
    name, as the reference's grouping orders it.
    """
    demo = [(pos, lab) for pos, _, lab in token_labels if "demo" in lab]
    ranges: dict[str, tuple[int, int]] = {}
    for pos, lab in demo:
        lo, hi = ranges.get(lab, (pos, pos))
        ranges[lab] = (min(lo, pos), max(hi, pos))
    idx_avg = {lab: ranges[lab] for lab in sorted(ranges) if ranges[lab][1] - ranges[lab][0] > 0}
    seen: set[str] = set()
    dup_positions: set[int] = set()
    for pos, lab in demo:
        if lab in seen:
            dup_positions.add(pos)
        seen.add(lab)
    kept = [pos for pos, _, _ in token_labels if pos not in dup_positions]
    idx_map = {int(k): int(gt[0]) for k, gt in zip(kept, gt_labels)}
    return idx_map, {k: (int(a), int(b)) for k, (a, b) in idx_avg.items()}


def full_idx_map(idx_map: dict[int, int], idx_avg: dict[str, tuple[int, int]]) -> dict[int, int]:
    """``idx_map`` extended so every token of a multi-token word maps to that word's slot."""
    extra: dict[int, int] = {}
    for i, j in idx_avg.values():
        for k in range(i, j + 1):
            if k not in idx_map:
                extra[k] = idx_map[i]
    return {**idx_map, **extra}


def lone_metaspace_positions(tokenizer: Any, input_ids: Sequence[int]) -> list[int]:
    """Positions in ``input_ids`` whose token is the SentencePiece mark ``▁`` alone (a standalone space token)."""
    pieces = tokenizer.convert_ids_to_tokens([int(i) for i in input_ids])
    return [i for i, p in enumerate(pieces) if p == METASPACE]


def lone_metaspace_tokens(prompt_data: dict, tokenizer: Any, prepend_bos: bool, dummy: Sequence[tuple[int, str]]) -> list[dict]:
    """The slot map's lone ``▁`` tokens of one prompt: ``[{"position", "label", "slot"}]``, where ``label`` is the
    token's meta label and ``slot`` the dummy slot its activation is averaged into (``idx_map_full``; None when the
    slot map drops it). Empty for tokenizers without the mark (byte-level BPEs)."""
    labels, text = token_meta_labels(prompt_data, tokenizer, prepend_bos=prepend_bos)
    lone = lone_metaspace_positions(tokenizer, tokenizer(text).input_ids)
    if not lone:
        return []
    idx_map, idx_avg = slot_maps(labels, dummy)
    full = full_idx_map(idx_map, idx_avg)
    by_pos = {pos: lab for pos, _, lab in labels}
    return [{"position": int(i), "label": by_pos.get(i, "(unlabelled)"), "slot": full.get(i)} for i in lone]
