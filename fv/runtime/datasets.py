"""Input data: ICL datasets (a JSON list of input/output pairs), relation CSVs, and the reference's split.

The split reproduces scikit-learn's ``train_test_split(rows, test_size, random_state=seed)`` as the
reference's ``split_icl_dataset`` calls it (twice), without needing pandas or scikit-learn at run time.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fv import schema
from fv.errors import FVError
from fv.io import read_json, read_text

Pair = dict  # {"input": str, "output": str}


def load_icl_dataset(path: str | Path) -> list[Pair]:
    """Load a JSON list of ``{"input", "output"}`` rows; values are kept as the reference keeps them (str())."""
    data = read_json(path, "dataset")
    schema.check(data, schema.ICL_DATASET, f"dataset {path}", "", "A dataset is a JSON list of {\"input\": ..., \"output\": ...} objects.")
    return [{"input": row["input"], "output": row["output"]} for row in data]


def _one_split(n: int, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (train, test) exactly as sklearn's ShuffleSplit draws them for an int random_state."""
    n_test = math.ceil(test_size * n)
    n_train = n - n_test
    if n_train <= 0 or n_test <= 0:
        raise FVError(f"cannot split {n} rows with test_size={test_size}: one side would be empty. Use a larger dataset.")
    perm = np.random.RandomState(seed).permutation(n)
    return perm[n_test : n_test + n_train], perm[:n_test]


@dataclass(frozen=True)
class Splits:
    """Row numbers of the raw dataset for each split, in the order the reference's DataFrames hold them."""

    train: list[int]
    valid: list[int]
    test: list[int]


def split_indices(n_rows: int, test_size: float = 0.3, seed: int = 0) -> Splits:
    """The reference's train/valid/test split: train vs rest, then the rest into test (first) and valid."""
    train_pos, rest_pos = _one_split(n_rows, test_size, seed)
    test_pos2, valid_pos2 = _one_split(len(rest_pos), test_size, seed)
    rest = rest_pos  # row numbers, in the order the first call left them
    return Splits(
        train=[int(x) for x in train_pos],
        valid=[int(rest[i]) for i in valid_pos2],
        test=[int(rest[i]) for i in test_pos2],
    )


_ID_COLS = ("id", "q", "qid", "q_id")
_A_COLS = ("ex_A", "exA", "input")
_B_COLS = ("ex_B", "exB", "output")


def load_relation_csv(path: str | Path) -> dict[str, list[tuple[str, str]]]:
    """Rows grouped by q id in file order; cells stripped, empty rows dropped (docs/reference.md, "Fixed trials").

    The file is decoded once (UTF-8, BOM allowed; UTF-16 and binary refused by ``decode_text``), then parsed;
    a row with an empty cell is named by CSV line and column.
    """
    p = Path(path)
    where = f"relation CSV {p}"
    if not p.is_file():
        raise FVError(f"relation CSV not found: {p}. Check --relation-csv.")
    text = read_text(p, "relation CSV")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    groups: dict[str, list[tuple[str, str]]] = {}
    try:
        fields = reader.fieldnames or []
        pick = lambda names: next((c for c in names if c in fields), None)  # noqa: E731
        cid, ca, cb = pick(_ID_COLS), pick(_A_COLS), pick(_B_COLS)
        if not (cid and ca and cb):
            raise FVError(f"{where}, line 1: expected a header with columns id, ex_A, ex_B (or q/qid, exA/input, "
                          f"exB/output); found {fields}.")
        for row in reader:
            cells = {c: (row.get(c) or "").strip() for c in (cid, ca, cb)}
            if not any(cells.values()):
                continue
            empty = [c for c, v in cells.items() if not v]
            if empty:
                raise FVError(f"{where}, line {reader.line_num}, column {empty[0]}: expected a non-empty cell (each row needs "
                              f"{cid}, {ca} and {cb}), found an empty one.")
            groups.setdefault(cells[cid], []).append((cells[ca], cells[cb]))
    except csv.Error as exc:
        raise FVError(f"{where}, line {reader.line_num}: not readable as CSV ({exc}).") from None
    if not groups:
        raise FVError(f"{where} has no data rows under its header {fields}.")
    return groups
