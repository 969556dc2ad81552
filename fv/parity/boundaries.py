"""Tokens that straddle two prompt parts, and the slot each was given (M0 output).

A prompt is built from parts (prefixes, words, separators). Some tokenizers merge across a part boundary:
Llama 3 makes ``.\\n`` and ``.\\n\\n`` single tokens, so a word ending in a full stop shares its last token with
the separator after it. The reference then gives that token one label (the later part's, by its counting of
tokens over growing prefixes); fv does the same, and the M0 slot gate checks it label for label. This module
counts such tokens from the tokenizer's character offsets, independently of the labelling, and names the
slot they were given.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

from fv.runtime.prompts import prompt_parts_and_labels, prompt_string, token_meta_labels


@dataclass(frozen=True)
class BoundaryToken:
    position: int  # in the tokenized prompt, BOS included where the tokenizer adds one
    text: str  # the token's characters in the prompt
    parts: tuple[str, str]  # the labels of the first and last prompt part it covers
    slot: str  # the label it was given


def _flat(parts: list, labels: list) -> list[tuple[str, str]]:
    out = []
    for p, l in zip(parts, labels):
        if isinstance(p, list):
            out += [(str(w), str(x)) for w, x in zip(p, l)]
        else:
            out.append((str(p), str(l)))
    return out


def boundary_tokens(prompt_data: dict, tokenizer: Any, prepend_bos: bool) -> list[BoundaryToken]:
    """Every token of ``prompt_data``'s prompt whose characters span two or more prompt parts. Needs a fast
    tokenizer (character offsets); ``prepend_bos`` says the tokenizer adds a BOS token itself."""
    parts, labels = prompt_parts_and_labels(prompt_data)
    flat = [(w, l) for w, l in _flat(parts, labels) if w]
    text = prompt_string(prompt_data)
    starts, pos = [], 0
    for w, _l in flat:
        starts.append(pos)
        pos += len(w)
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    meta, _ = token_meta_labels(prompt_data, tokenizer, prepend_bos=prepend_bos)
    shift = 1 if prepend_bos else 0
    out = []
    for i, (s, e) in enumerate(enc["offset_mapping"]):
        inside = [b for b in starts[1:] if s < b < e]
        if not inside:
            continue
        first = max(k for k, b in enumerate(starts) if b <= s)
        last = max(k for k, b in enumerate(starts) if b < e)
        slot = meta[i + shift][2] if i + shift < len(meta) else "(unlabelled)"
        out.append(BoundaryToken(i + shift, text[s:e], (flat[first][1], flat[last][1]), slot))
    return out


def boundary_counts(trials: Any, tokenizer: Any, verify_n: int | None = None) -> tuple[int, int, Counter]:
    """(straddling tokens, trials with any, Counter of (token text, parts, slot)) over the clean prompts."""
    from fv.model.tokenizers import tokenizer_prepends_bos

    bos = tokenizer_prepends_bos(tokenizer)
    n_tokens, n_trials, kinds = 0, 0, Counter()
    for tr in trials.subset(verify_n):
        found = boundary_tokens(tr.prompt_data_clean, tokenizer, bos)
        n_tokens += len(found)
        n_trials += bool(found)
        kinds.update((b.text, b.parts, b.slot) for b in found)
    return n_tokens, n_trials, kinds


def boundary_summary(trials: Any, tokenizer: Any, verify_n: int | None = None) -> str:
    """One line for M0: how many tokens straddle a prompt-part boundary and which slot they were given."""
    if not getattr(tokenizer, "is_fast", False):
        return "tokens straddling prompt parts: not counted (a slow tokenizer gives no character offsets)"
    try:
        n_tokens, n_trials, kinds = boundary_counts(trials, tokenizer, verify_n)
    except Exception as exc:  # a report line: it never stops the command that prints it
        return f"tokens straddling prompt parts: not counted ({type(exc).__name__}: {exc})"
    n = len(trials.subset(verify_n))
    if not n_tokens:
        return f"tokens straddling prompt parts: 0 in {n} clean prompts (every token lies within one part)"
    shown = "; ".join(f"{text!r} ({a} + {b}) -> slot {slot} x{c}" for (text, (a, b), slot), c in kinds.most_common(6))
    more = f"; and {len(kinds) - 6} more kinds" if len(kinds) > 6 else ""
    return f"tokens straddling prompt parts: {n_tokens} in {n_trials} of {n} clean prompts: {shown}{more}"


def describe(found: Sequence[BoundaryToken]) -> str:
    """Boundary tokens in one line: ``position:'text'->slot`` for each, comma-separated."""
    return ", ".join(f"{b.position}:{b.text!r}->{b.slot}" for b in found)
