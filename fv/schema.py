"""The schemas of every JSON input fv reads, and one checker that names the JSON path of the first violation.

It sits beside ``fv/io.py``, below runtime and parity, so that both check their inputs at the door with it.

Kept in one place so that a fixed-trials file (ICL or relation, docs/reference.md "Fixed trials"), an ICL
dataset and a dump read back by ``fv parity diff`` are checked once, where they enter, and every later stage may
index them without guarding: a string where a list belongs is reported as ``trials[3].prompt_data_clean.examples:
expected a list ..., found a string ...`` instead of a ``TypeError`` deep inside prompt rendering.

A schema is plain data: a kind name (see ``_KINDS``), a ``ListOf``, or a dict of keys (a key ending in ``?``
is optional). Unknown keys are allowed: users' files may carry more than fv writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fv.errors import FVError


@dataclass(frozen=True)
class ListOf:
    """A JSON list whose items all follow ``item``, with at least ``min_len`` of them."""

    item: Any
    min_len: int = 0


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# kind -> (test, what it is called in a message)
_KINDS: dict[str, tuple[Any, str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "str+": (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string"),
    "int": (_is_int, "an integer"),
    "idx": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "id": (lambda v: _is_int(v) or (isinstance(v, str) and v != ""), "an integer or a non-empty string"),
    "num": (lambda v: (_is_int(v) or isinstance(v, float)), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "text": (lambda v: isinstance(v, str) or _is_int(v) or isinstance(v, float), "a string (or a number)"),
    "any": (lambda v: True, "any value"),
}

PAIR = {"input": "str", "output": "str"}
TEMPLATE = {"input": "str", "output": "str", "instructions": "str"}
PROMPT_DATA = {"instructions": "str", "separators": TEMPLATE, "prefixes": TEMPLATE, "query_target": PAIR,
               "examples": ListOf(PAIR)}
_COMMON_TRIAL = {
    "demos_clean": ListOf(PAIR), "demos_corrupted": ListOf(PAIR), "query": PAIR,
    "prompt_data_clean": PROMPT_DATA, "prompt_data_corrupted": PROMPT_DATA,
    "clean_prompt_str": "str", "corrupted_prompt_str": "str", "target_str": "str",
    "answer_ids": ListOf("idx", 1), "target_first_token_id": "idx",
}
ICL_TRIAL = {"trial_id": "id", "demo_indices_in_train": ListOf("idx"), "query_index_in_valid": "idx",
             **_COMMON_TRIAL, "first_token_id": "idx"}
RELATION_TRIAL = {"q_id": "str+", "query_source_index": "idx", "demo_source_indices": ListOf("idx"),
                  "demo_order?": ListOf("idx"), **_COMMON_TRIAL}
TRIALS_META = {
    "dataset_json?": "str", "relation_csv?": "str", "seed?": "int", "n_trials?": "idx", "n_shots?": "idx",
    "n_trials_per_q?": "idx", "n_demos?": "idx", "test_split?": "num", "prefixes?": TEMPLATE, "separators?": TEMPLATE,
    "model_name_for_tokenizer?": "str", "model_prepend_bos?": "bool", "prepend_bos_token_used?": "bool",
    "q_ids?": ListOf("str+"), "skipped_qs?": ListOf("any"),
}
TRIALS_FILE = {"meta?": TRIALS_META, "splits?": {"train_indices": ListOf("idx"), "valid_indices": ListOf("idx"),
                                                  "test_indices": ListOf("idx")},
               "trials": ListOf("any", 1)}  # each trial is checked as ICL or relation by validate_trials
ICL_DATASET = ListOf({"input": "text", "output": "text"}, 1)
TOP_HEADS = ListOf(ListOf("num", 3))  # [[layer, head, score], ...]
DUMP_TRIAL = {"trial_id": "id", "trial_idx": "idx", "clean_prompt_str?": "str", "corrupted_prompt_str?": "str",
              "clean_input_ids?": ListOf("int"), "corrupted_input_ids?": ListOf("int"), "answer_ids?": ListOf("int"),
              "slots?": dict, "injection?": dict}
DUMP = {"meta?": {"fixed_trials_sha256?": "str"}, "dummy_labels?": ListOf(ListOf("any", 2)), "trials": ListOf(DUMP_TRIAL)}


def describe(v: Any, width: int = 40) -> str:
    """A short, one-line picture of a found value: its JSON type and the start of its text."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"{str(v).lower()}"
    if isinstance(v, (int, float)):
        return f"the number {v!r}"
    if isinstance(v, str):
        s = repr(v)
        return f"a string {s if len(s) <= width else s[:width] + '...'}" if v else "an empty string"
    if isinstance(v, list):
        return f"a list of {len(v)}"
    if isinstance(v, dict):
        keys = list(v)[:4]
        return f"an object with keys {keys}{'...' if len(v) > 4 else ''}" if v else "an empty object"
    return type(v).__name__


def expected_of(schema: Any) -> str:
    """What a schema asks for, in words."""
    if isinstance(schema, str):
        return _KINDS[schema][1]
    if isinstance(schema, ListOf):
        inner = "" if schema.item == "any" else f" of {_plural(expected_of(schema.item))}"
        return f"{'a non-empty list' if schema.min_len == 1 else 'a list'}{inner}" if schema.min_len <= 1 else \
            f"a list of at least {schema.min_len}{inner}"
    if schema is dict:
        return "an object"
    keys = [k.rstrip("?") for k in schema if not k.endswith("?")]
    return f"an object with keys {keys}" if keys else "an object"


def _plural(s: str) -> str:
    for a in ("an ", "a "):
        if s.startswith(a):
            s = s[len(a):]
            break
    return s.replace("integer", "integers").replace("string", "strings").replace("object", "objects").replace("number", "numbers")


def check(value: Any, schema: Any, where: str, path: str = "", hint: str = "") -> None:
    """Raise one FVError line at the first place ``value`` departs from ``schema``: file, JSON path, expected, found."""
    def fail(p: str, expected: str, found: str) -> None:
        raise FVError(f"{where}: {p or 'the top level'}: expected {expected}, found {found}.{(' ' + hint) if hint else ''}")

    if isinstance(schema, str):
        if not _KINDS[schema][0](value):
            fail(path, _KINDS[schema][1], describe(value))
        return
    if isinstance(schema, ListOf):
        if not isinstance(value, list) or len(value) < schema.min_len:
            fail(path, expected_of(schema), describe(value))
        for i, item in enumerate(value):
            check(item, schema.item, where, f"{path}[{i}]", hint)
        return
    if schema is dict:
        if not isinstance(value, dict):
            fail(path, "an object", describe(value))
        return
    if not isinstance(value, dict):
        fail(path, expected_of(schema), describe(value))
    for key, sub in schema.items():
        optional = key.endswith("?")
        name = key.rstrip("?")
        sub_path = f"{path}.{name}" if path else name
        if name not in value:
            if optional:
                continue
            raise FVError(f"{where}: {sub_path}: missing; expected {expected_of(sub)} there.{(' ' + hint) if hint else ''}")
        check(value[name], sub, where, sub_path, hint)


def text_difference(expected: str, found: str, context: int = 24) -> str:
    """Where two strings first part, with ``context`` characters on both sides of that place in each.

    A prompt of 2,000 characters that differs at character 1,500 is useless cut at 80 from the start; this
    shows the place itself: ``first difference at character 1500 (line 31, column 4): expected '...', found '...'``.
    """
    i = next((k for k, (a, b) in enumerate(zip(expected, found)) if a != b), min(len(expected), len(found)))
    line = expected.count("\n", 0, i) + 1
    col = i - (expected.rfind("\n", 0, i) + 1) + 1

    def window(s: str) -> str:
        lo, hi = max(0, i - context), min(len(s), i + context)
        return repr(("…" if lo else "") + s[lo:hi] + ("…" if hi < len(s) else ""))

    ends = ""
    if i == min(len(expected), len(found)):
        ends = f" ({'the found text ends there' if len(found) < len(expected) else 'the found text goes on'})"
    return (f"first difference at character {i} (line {line}, column {col}){ends}: expected {window(expected)}, "
            f"found {window(found)}")
