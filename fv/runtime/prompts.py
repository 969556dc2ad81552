"""Prompt strings, per-token meta labels, dummy labels and slot maps (idx_map, idx_avg).

These behave exactly like the reference's prompt utilities, quirks included, because every later stage
indexes activations by these labels: a label overwritten when a prompt part adds no token, the renaming of
the last structural token of each query/answer to ``predictive``, and of an example's first output
separator token to ``end_of_example``. Token counts come from ``tokenizer.tokenize`` on the growing prompt,
as the reference counts them, so tokenizers that merge across part boundaries are labelled the same way.
"""

from __future__ import annotations

from typing import Any, Sequence

DEFAULT_PREFIXES = {"input": "Q:", "output": "A:", "instructions": ""}
DEFAULT_SEPARATORS = {"input": "\n", "output": "\n\n", "instructions": ""}
# The reference writes GPT-2's BOS text into the instructions prefix when the tokenizer adds none.
BOS_TEXT = "<|endoftext|>"

TokenLabel = tuple[int, str, str]  # (token position, decoded token, label)
# SentencePiece's word-boundary mark. Tokenizers that split digits (Llama 2, Gemma) or lack a piece "▁x" write a space
# before such a word as a token of its own: " 3" is "▁", "3". Decoded alone it is "" (Llama 2, whose decoder strips
# the leading space) or " " (Gemma), so the slot map's decoded tokens do not show it; lone_metaspace_tokens does.
METASPACE = "\u2581"


def make_prompt_data(
    examples: Sequence[tuple[Any, Any]],
    query: tuple[Any, Any] | None,
    prefixes: dict | None = None,
    separators: dict | None = None,
    instructions: str = "",
    prepend_bos_token: bool = False,
    prepend_space: bool = True,
) -> dict:
    """The prompt_data dict the reference's prompt builder makes from word pairs (no label shuffling).

    Keys come in the reference's order so a trials file written from it is byte-comparable.
    """
    prefixes = dict(DEFAULT_PREFIXES if prefixes is None else prefixes)
    separators = dict(DEFAULT_SEPARATORS if separators is None else separators)
    if prepend_bos_token:
        prefixes = {k: (v if k != "instructions" else BOS_TEXT + v) for k, v in prefixes.items()}
    sp = " " if prepend_space else ""
    data: dict = {"instructions": instructions, "separators": separators, "prefixes": prefixes}
    if prepend_space:
        data["query_target"] = None if query is None else {"input": sp + str(query[0]), "output": sp + str(query[1])}
        data["examples"] = [{"input": sp + str(a), "output": sp + str(b)} for a, b in examples]
    else:
        data["query_target"] = None if query is None else {"input": query[0], "output": query[1]}
        data["examples"] = [{"input": a, "output": b} for a, b in examples]
    return data


def _query_of(prompt_data: dict, query: Any) -> str:
    if query is None and prompt_data.get("query_target") is not None:
        query = prompt_data["query_target"]["input"]
    if isinstance(query, list):
        query = query[0]
    return query


def prompt_string(prompt_data: dict, query: Any = None) -> str:
    """The ICL prompt text: instructions, each example, then the query up to the output prefix."""
    query = _query_of(prompt_data, query)
    pre, sep = prompt_data["prefixes"], prompt_data["separators"]
    out = pre["instructions"] + prompt_data["instructions"] + sep["instructions"]
    for ex in prompt_data["examples"]:
        out += pre["input"] + ex["input"] + sep["input"]
        out += pre["output"] + ex["output"] + sep["output"]
    return out + pre["input"] + query + sep["input"] + pre["output"]


def zero_shot_prompt_data(prompt_data: dict) -> dict:
    """The same template and query with no examples: ``Q: <query>\\nA:``."""
    return {**prompt_data, "examples": []}


def prompt_parts_and_labels(prompt_data: dict, query: Any = None) -> tuple[list, list]:
    """Prompt pieces and their role labels, nested per example, as the reference assembles them."""
    query = _query_of(prompt_data, query)
    pre, sep = prompt_data["prefixes"], prompt_data["separators"]
    parts: list = [pre["instructions"], prompt_data["instructions"], sep["instructions"]]
    labels: list = ["bos_token", "instructions_token", "separator_token"]
    for i, ex in enumerate(prompt_data["examples"]):
        parts.append([pre["input"], ex["input"], sep["input"], pre["output"], ex["output"], sep["output"]])
        labels.append(
            ["structural_token", f"demonstration_{i+1}_token", "separator_token",
             "structural_token", f"demonstration_{i+1}_label_token", "separator_token"]
        )
    parts.append([pre["input"], query, sep["input"], pre["output"]])
    labels.append(["query_structural_token", "query_demonstration_token", "query_separator_token", "query_structural_token"])
    return parts, labels


def extend_labels(parts: list, labels: list, tokenizer: Any, label_init: list[str]) -> list[str]:
    """One label per token: each part's label repeated over the tokens it adds to the growing prompt."""
    groups = [list(zip(p, l)) if isinstance(p, list) else [(p, l)] for p, l in zip(parts, labels)]
    prefixes, built = [""], ""
    for group in groups:
        for word, _ in group:
            if len(word):
                built += word
                prefixes.append(built)
    counts = iter(prefix_token_counts(tokenizer, prefixes))
    out = list(label_init)
    before = next(counts)
    for group in groups:
        for j, (word, label) in enumerate(group):
            if len(word) == 0:
                continue
            now = next(counts)
            added, before = now - before, now
            if added == 0:
                out[-1] = label  # the part merged into the previous token: that token takes this label
            out.extend([label] * added)
            # As in the reference: group[3] is a (word, label) pair, so its len is never 0 and only j == 3 renames.
            if j == 3 or (j == 2 and len(group[3]) == 0):
                out[-1] = out[-1].replace("structural", "predictive").replace("separator", "predictive")
            if j == 5:
                out[-added] = out[-added].replace("separator", "end_of_example")
    return out


def prefix_token_counts(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """``len(tokenizer.tokenize(t))`` for each text; one batched call of the Rust tokenizer when there is one.

    ``tokenize`` of a fast tokenizer is its backend's encoding without special tokens, so the batched counts
    are the same numbers (the M0 slot-parity gate checks this against the reference on every dataset).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None:
        return [len(tokenizer.tokenize(t)) for t in texts]
    return [len(e.ids) for e in backend.encode_batch(list(texts), add_special_tokens=False)]


def token_meta_labels(prompt_data: dict, tokenizer: Any, query: Any = None, prepend_bos: bool = False) -> tuple[list[TokenLabel], str]:
    """``[(position, decoded token, label), ...]`` for the prompt, and the prompt string.

    ``prepend_bos`` says the tokenizer adds a BOS token itself, which then takes the first label.
    As in the reference, labels and tokens are zipped, so the shorter of the two bounds the list.
    """
    query = _query_of(prompt_data, query)
    parts, labels = prompt_parts_and_labels(prompt_data, query)
    meta = extend_labels(parts, labels, tokenizer, ["bos_token"] if prepend_bos else [])
    text = prompt_string(prompt_data, query)
    tokens = tokenizer.batch_decode([[t] for t in tokenizer(text).input_ids])  # each token decoded alone, as decode(t)
    return [(i, tok, lab) for i, (tok, lab) in enumerate(zip(tokens, meta))], text


def has_bos_text(prompt_data: dict) -> bool:
    """Whether these prompts carry the BOS text in their instructions prefix (``prepend_bos_token_used``)."""
    return str(prompt_data.get("prefixes", {}).get("instructions", "")).startswith(BOS_TEXT)


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


def answer_ids(tokenizer: Any, prompt: str, target: str) -> list[int]:
    """Token ids the target adds after the prompt, tokenized in context (the reference's ``get_answer_id``)."""
    src = tokenizer(prompt, truncation=False, padding=False).input_ids
    tgt = tokenizer(prompt + target, truncation=False, padding=False).input_ids
    if not len(src) < len(tgt):
        raise ValueError(f"target {target!r} adds no token after the prompt")
    return list(tgt[len(src):])

