"""Rule tasks a small model can infer from demonstrations, and the split of their words.

Five tasks map a lowercase word to one of its letters by a rule: ``lowercase_first_letter`` and
``lowercase_last_letter`` (two of the reference's own tasks, here over this split's words), ``second_letter``,
``second_last_letter`` and ``next_letter`` (the letter after the first, ``z`` to ``a``). Every answer is one lowercase
letter. Their words are every lowercase word of 2 to 8 letters in the reference's datasets that fv ships
(``fixtures/data``: antonym, capitalize, country-capital, english-french), split once from a fixed seed into ``train``
(the only words a training sequence ever holds), ``valid`` (where the edit layer is chosen) and ``test`` (where the
figures come from); ``write_task_files`` writes the split and each task's ``test`` and ``valid`` pairs in the
reference's dataset format (``[{"input", "output"}]``) under ``fixtures/rule_tasks/``, and ``relation.csv``: a
relation CSV (``id,ex_A,ex_B``, one q per task, its id the task's name) of ``N_RELATION_ROWS`` test words per task,
M7's default inputs on the trained tiny model.

The answers' letter statistics differ by task (second letters of English words are mostly vowels, last letters
mostly ``e``, ``s``, ``t``), so a shuffled-label prompt still hints at its task where the statistics differ most
(docs/trained_model.md). Training on random letter strings instead (uniform statistics) did not learn the tasks in
1,600 steps (valid ICL accuracy 0.24 at step 1,500, chance 0.2).
"""

from __future__ import annotations

import json
import random
import re
import string
from pathlib import Path
from typing import Callable

from fv.io import write_json
from fv.paths import FIXTURES

SOURCE_DATASETS = ("antonym", "capitalize", "country-capital", "english-french")
WORD = re.compile(r"[a-z]{2,8}")
SPLIT_SEED = 20261207
N_TEST, N_VALID = 1000, 500
N_RELATION_ROWS = 12  # per q of relation.csv: M7 draws 3 trials of 9 demos and a query from them
RELATION_CSV = "relation.csv"
TASK_DIR = FIXTURES / "rule_tasks"


def _next_letter(letter: str) -> str:
    return string.ascii_lowercase[(string.ascii_lowercase.index(letter) + 1) % 26]


RULES: dict[str, Callable[[str], str]] = {
    "lowercase_first_letter": lambda w: w[0],
    "lowercase_last_letter": lambda w: w[-1],
    "second_letter": lambda w: w[1],
    "second_last_letter": lambda w: w[-2],
    "next_letter": lambda w: _next_letter(w[0]),
}
TASKS = tuple(RULES)


def source_words(data_dir: Path = FIXTURES / "data") -> list[str]:
    """Every distinct lowercase word of 2 to 8 letters among the inputs and outputs of ``SOURCE_DATASETS``, sorted."""
    words: set[str] = set()
    for name in SOURCE_DATASETS:
        for pair in json.loads((data_dir / f"{name}.json").read_text(encoding="utf-8")):
            for key in ("input", "output"):
                w = str(pair[key]).strip()
                if WORD.fullmatch(w):
                    words.add(w)
    return sorted(words)


def split_words(words: list[str], seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """``{"train", "valid", "test"}``: disjoint, each sorted; ``N_TEST`` and ``N_VALID`` words drawn from ``seed``, the
    rest train (a training sequence holds train words and single letters only)."""
    shuffled = list(words)
    random.Random(seed).shuffle(shuffled)
    test, valid, train = shuffled[:N_TEST], shuffled[N_TEST:N_TEST + N_VALID], shuffled[N_TEST + N_VALID:]
    return {"train": sorted(train), "valid": sorted(valid), "test": sorted(test)}


def pairs(task: str, words: list[str]) -> list[dict]:
    """The task's ``[{"input", "output"}]`` pairs over ``words``."""
    rule = RULES[task]
    return [{"input": w, "output": rule(w)} for w in words]


def load_split(task_dir: Path = TASK_DIR) -> dict[str, list[str]]:
    """The committed split (``split.json``): ``{"train", "valid", "test"}`` word lists."""
    data = json.loads((task_dir / "split.json").read_text(encoding="utf-8"))
    return {k: data[k] for k in ("train", "valid", "test")}


def task_file(task: str, part: str = "test", task_dir: Path = TASK_DIR) -> Path:
    """The dataset file of ``task``'s ``part`` (``test``: ``<task>.json``; ``valid``: ``<task>_valid.json``)."""
    return task_dir / (f"{task}.json" if part == "test" else f"{task}_{part}.json")


def write_task_files(task_dir: Path = TASK_DIR) -> dict[str, list[str]]:
    """Write ``split.json`` and, per task, its test and valid pairs; returns the split."""
    split = split_words(source_words())
    write_json(task_dir / "split.json", {"seed": SPLIT_SEED, "sources": [f"fixtures/data/{n}.json" for n in SOURCE_DATASETS],
                                         "rule": "lowercase words of 2 to 8 letters", **split})
    for task in TASKS:
        write_json(task_file(task, "test", task_dir), pairs(task, split["test"]))
        write_json(task_file(task, "valid", task_dir), pairs(task, split["valid"]))
    write_relation_csv(split["test"], task_dir / RELATION_CSV)
    return split


def write_relation_csv(test_words: list[str], path: Path, seed: int = SPLIT_SEED) -> Path:
    """``path``: one q per task (its id the task's name), ``N_RELATION_ROWS`` of ``test_words`` drawn from ``seed``
    (the same words for every task), rows ``q,word,answer``; written whole or not at all."""
    import csv
    import io

    from fv.io import write_text

    words = random.Random(seed).sample(sorted(test_words), N_RELATION_ROWS)
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "ex_A", "ex_B"])
    for task in TASKS:
        w.writerows([task, p["input"], p["output"]] for p in pairs(task, words))
    write_text(path, buf.getvalue())
    return path
