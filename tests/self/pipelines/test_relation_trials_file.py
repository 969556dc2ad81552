"""Relation trials in the user's exact schema (docs/reference.md, "Fixed trials"; SPEC 2): a file fv makes from a
relation CSV equals, field for field, the one the user's own sampler makes by the written rule; the demos and the
query hold the CSV cells as written, the prompt's leading space lives only in the prompt data."""

from __future__ import annotations

import csv
import json
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


def _users_file(path, tokenizer, seed: int = 7, n_trials_per_q: int = 2) -> dict:
    """A user's all-q sampled-trials file, made by their own sampler (another seed than fv's default)."""
    raw = {"meta": {"relation_csv": "relationA_ex.csv", "seed": seed, "n_trials_per_q": n_trials_per_q, "n_demos": 9},
           "trials": users_rule(FIXTURES / "data" / "relationA_ex.csv", tokenizer, n_trials_per_q, 9, seed)}
    path.write_text(json.dumps(raw, indent=1))
    return raw


def test_relation_runs_exactly_a_users_trials_file(tmp_path, capsys):
    from fv.cli import main
    from fv.pipelines.relation import read_status

    raw = _users_file(tmp_path / "sampled_trials_all_q.json", load_tokenizer(ensure_tiny_model("tiny-llama")))
    out = tmp_path / "out"
    assert main(["relation", "--fixed-trials", str(tmp_path / "sampled_trials_all_q.json"), "--q-list", "Q3", "--model",
                 "tiny-llama", "--device", "cpu", "--out", str(out), "--edit-layers", "9", "--no-plots", "--quiet"]) == 0
    root = out / "sampled_trials_all_q"
    mine = [t for t in raw["trials"] if t["q_id"] == "Q3"]
    ran = json.loads((root / "Q3" / "fixed_trials_sampled_trials_all_q_Q3.json").read_text())
    assert ran["trials"] == mine and len(mine) == 2
    assert read_status(root, "Q3")["status"] == "completed" and read_status(root, "Q3")["n_trials"] == 2
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["Q3"]


@pytest.mark.parametrize("args, needle, code", [  # 2: options that cannot go together; 1: a file of the wrong kind
    (["--relation-csv", "x.csv", "--fixed-trials", "y.json"], "expected exactly one of --relation-csv CSV or --fixed-trials FILE", 2),
    (["--fixed-trials", str(FIXTURES / "data" / "fixed_trials_antonym_t10_s10_seed0.json")], "expected relation trials (each with q_id)", 1),
])
def test_relation_trials_file_errors_are_one_line(args, needle, code, capsys):
    from fv.cli import main

    assert main(["relation", *args, "--no-plots"]) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err
