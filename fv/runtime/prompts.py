"""Prompt strings and per-token meta labels (the slots they are averaged into: fv.runtime.slots).

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


def answer_ids(tokenizer: Any, prompt: str, target: str) -> list[int]:
    """Token ids the target adds after the prompt, tokenized in context (the reference's ``get_answer_id``)."""
    src = tokenizer(prompt, truncation=False, padding=False).input_ids
    tgt = tokenizer(prompt + target, truncation=False, padding=False).input_ids
    if not len(src) < len(tgt):
        raise ValueError(f"target {target!r} adds no token after the prompt")
    return list(tgt[len(src):])

