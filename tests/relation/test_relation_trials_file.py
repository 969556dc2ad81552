"""Relation trials in the user's exact schema (docs/reference.md, "Fixed trials"; SPEC 2): a file fv makes from a
relation CSV equals, field for field, the one the user's own sampler makes by the written rule; the demos and the
query hold the CSV cells as written, the prompt's leading space lives only in the prompt data."""

from __future__ import annotations

import csv
import random

import pytest

from fv.model.tiny import ensure_tiny_model
from fv.model.tokenizers import load_tokenizer
from fv.paths import FIXTURES
from fv.runtime.trials import RELATION_TRIAL_KEYS, make_relation_trials

pytestmark = pytest.mark.m7


def users_rule(csv_path, tokenizer, n_trials_per_q: int, n_demos: int, seed: int) -> list[dict]:
    """The user's sampler, written from the rule alone (not from fv's code): Python's random, q ids sorted as
    strings, small qs skipped, one shuffle of all trials at the end; prompts ``Q: x\\nA: y\\n\\n`` with a space
    before every word."""
    groups: dict[str, list[tuple[str, str]]] = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            q, a, b = row["id"].strip(), row["ex_A"].strip(), row["ex_B"].strip()
            if q or a or b:
                groups.setdefault(q, []).append((a, b))
    pre = {"input": "Q:", "output": "A:", "instructions": ""}
    sep = {"input": "\n", "output": "\n\n", "instructions": ""}

    def data(pairs, query):
        return {"instructions": "", "separators": dict(sep), "prefixes": dict(pre),
                "query_target": {"input": " " + query[0], "output": " " + query[1]},
                "examples": [{"input": " " + a, "output": " " + b} for a, b in pairs]}

    def text(pairs, query):
        return "".join(f"Q: {a}\nA: {b}\n\n" for a, b in pairs) + f"Q: {query[0]}\nA:"

    rng = random.Random(seed)
    trials = []
    for q in sorted(groups):
        rows = groups[q]
        if len(rows) < n_demos + 1:
            continue
        for _ in range(n_trials_per_q):
            qi = rng.randrange(len(rows))
            order = [i for i in range(len(rows)) if i != qi]
            rng.shuffle(order)
            demos = [rows[i] for i in order[:n_demos]]
            outs = [b for _a, b in demos]
            shuffled = list(outs)
            rng.shuffle(shuffled)
            if shuffled == outs and len(outs) > 1:
                rng.shuffle(shuffled)
            corrupted = [(a, o) for (a, _b), o in zip(demos, shuffled)]
            clean_str, target = text(demos, rows[qi]), " " + rows[qi][1]
            full, prompt = tokenizer(clean_str + target).input_ids, tokenizer(clean_str).input_ids
            answer = full[len(prompt):]
            trials.append({
                "q_id": q, "query_source_index": qi, "demo_source_indices": order[:n_demos], "demo_order": order,
                "demos_clean": [{"input": a, "output": b} for a, b in demos],
                "demos_corrupted": [{"input": a, "output": b} for a, b in corrupted],
                "query": {"input": rows[qi][0], "output": rows[qi][1]},
                "clean_prompt_str": clean_str, "corrupted_prompt_str": text(corrupted, rows[qi]),
                "prompt_data_clean": data(demos, rows[qi]), "prompt_data_corrupted": data(corrupted, rows[qi]),
                "target_str": target, "target_first_token_id": answer[0], "answer_ids": answer,
            })
    rng.shuffle(trials)
    return trials


def test_relation_file_equals_the_users_rule_field_for_field():
    csv_path = FIXTURES / "data" / "relationA_ex.csv"
    tok = load_tokenizer(ensure_tiny_model("tiny-llama3tok"))
    made = make_relation_trials(csv_path, tok, 25, 9, 0, model_name_for_tokenizer="tiny-llama3tok", model_prepend_bos=True)
    theirs = users_rule(csv_path, tok, 25, 9, 0)
    assert len(made["trials"]) == len(theirs) == 25 * len(made["meta"]["q_ids"]) == 350
    differing = [(i, k) for i, (a, b) in enumerate(zip(theirs, made["trials"])) for k in RELATION_TRIAL_KEYS if a[k] != b[k]]
    assert differing == [], f"{len(differing)} differing fields; first {differing[:5]}"
    assert all(list(t) == list(RELATION_TRIAL_KEYS) for t in made["trials"])
    # the cells as written: no demo or query field starts with the prompt's space, every prompt-data field does
    t = made["trials"][0]
    assert not t["query"]["input"].startswith(" ") and t["prompt_data_clean"]["query_target"]["input"].startswith(" ")
