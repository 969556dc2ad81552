"""Issue 15, fuzzed: valid trials files (ICL and relation), datasets and relation CSVs, mutated the ways files go
wrong (a key dropped or retyped, the file cut short, another encoding, stray bytes, a duplicated trial or row, an
empty q). Property, for ``fv verify-trials``, ``fv make-trials`` and ``fv run``: the command either fails with
exactly one stderr line, no traceback, and nothing in its output folder, or it succeeds and what it wrote validates.

Bounded (``max_examples``, no deadline, no example database) so the module runs in well under a minute; ``fv run``
fails before the model loads on every invalid file, and a run that must succeed uses the tiny model on one trial.
"""

from __future__ import annotations

import contextlib
import copy
import json
import tempfile
from pathlib import Path
from typing import Any, Iterator

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fv.errors import FVError
from fv.io import read_json
from fv.lock import HOLDER_NAME
from fv.parity.diff import SideFolder
from fv.paths import FIXTURES
from fv.runtime.trials import load_trials
from tests.support.cli import RUN_ARGS, assert_one_line_failure, run_cli
from tests.support.tiny_trials import base_trials

FUZZ = settings(max_examples=25, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ_RUN = settings(FUZZ, max_examples=20)
# A file that passes validation costs a tiny-model pass; with --max-trials 1 only its first trial is computed,
# so a first trial already run (and its output validated) is not run again.
_RUN_DONE: set[str] = set()

ODD_VALUES = st.sampled_from(["x", "", 7, -1, 2.5, None, True, [], {}, [1, 2], {"input": "a"}])
ENCODINGS = ("utf-16", "utf-32", "utf-16-le", "latin-1", "utf-8-sig")


def _nodes(obj: Any, path: tuple = ()) -> list[tuple]:
    """Every path below ``obj`` (keys and list positions)."""
    out = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        out.append(path + (k,))
        out.extend(_nodes(v, path + (k,)))
    return out


def _parent(obj: Any, path: tuple) -> Any:
    for k in path[:-1]:
        obj = obj[k]
    return obj


def _encode(text: str, encoding: str) -> bytes:
    if encoding == "latin-1":  # a non-ASCII character makes latin-1 differ from UTF-8
        text = text.replace("a", "\u00e9", 1)
    return text.encode(encoding)


@st.composite
def mutated_json(draw, base: Any, duplicate_path: tuple, q_path: tuple | None) -> bytes:
    """``base`` as JSON bytes, mutated once; ``duplicate_path`` names the list whose item may be repeated and
    ``q_path`` (under each item) the field to empty."""
    doc = copy.deepcopy(base)
    op = draw(st.sampled_from(["drop", "retype", "truncate", "encoding", "bytes", "duplicate", "empty_q"]))
    nodes = _nodes(doc)
    if op in ("drop", "retype"):
        path = nodes[draw(st.integers(0, len(nodes) - 1))]
        parent = _parent(doc, path)
        if op == "drop":
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(ODD_VALUES)
    if op in ("duplicate", "empty_q"):
        items = _parent(doc, duplicate_path + (0,))
    if op == "duplicate":
        items.append(copy.deepcopy(items[draw(st.integers(0, len(items) - 1))]))
    if op == "empty_q" and q_path:
        item = items[draw(st.integers(0, len(items) - 1))]
        _parent(item, q_path)[q_path[-1]] = draw(st.sampled_from(["", " "]))
    return _as_bytes(draw, json.dumps(doc, ensure_ascii=False), op)


@st.composite
def mutated_csv(draw) -> bytes:
    """The tiny relation CSV, mutated once: a column dropped, a cell emptied or retyped, a q emptied, a row
    repeated, the file cut short, another encoding or stray bytes."""
    rows = [ln.split(",") for ln in (FIXTURES / "relation_tiny.csv").read_text(encoding="utf-8").splitlines()]
    op = draw(st.sampled_from(["drop_column", "blank_cell", "empty_q", "duplicate", "quote", "truncate", "encoding", "bytes"]))
    r = draw(st.integers(1, len(rows) - 1))
    c = draw(st.integers(0, 2))
    if op == "drop_column":
        rows = [[x for j, x in enumerate(row) if j != c] for row in rows]
    elif op == "blank_cell":
        rows[r][c] = draw(st.sampled_from(["", "  "]))
    elif op == "empty_q":
        rows[r][0] = ""
    elif op == "duplicate":
        rows.append(list(rows[r]))
    elif op == "quote":
        rows[r][c] = '"' + rows[r][c]
    return _as_bytes(draw, "\n".join(",".join(row) for row in rows) + "\n", op)


def _as_bytes(draw: Any, text: str, op: str) -> bytes:
    """``text`` as the file's bytes, with the byte-level mutations (another encoding, cut short, stray bytes)."""
    if op == "encoding":
        return _encode(text, draw(st.sampled_from(ENCODINGS)))
    data = text.encode("utf-8")
    if op == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if op == "bytes":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(min_size=1, max_size=6)) + data[at:]
    return data


def _trials_strategy():
    icl = mutated_json(base_trials("icl"), ("trials",), ("query", "input"))
    rel = mutated_json(base_trials("relation"), ("trials",), ("q_id",))
    return st.one_of(icl, rel)


def _dataset_strategy():
    rows = json.loads((FIXTURES / "antonym_tiny.json").read_text(encoding="utf-8"))
    return mutated_json(rows, (), ("input",))


@contextlib.contextmanager
def _fuzzed_file(name: str, data: bytes) -> Iterator[Path]:
    """``data`` written as ``name`` in a fresh temporary folder (beside it, room for the command's output)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(data)
        yield path


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists() or not any(out.iterdir()), f"a failed command left {sorted(p.name for p in out.iterdir())}"


@FUZZ
@given(data=_trials_strategy())
def test_verify_trials_answers_any_trials_file_in_one_line(data):
    with _fuzzed_file("trials.json", data) as p:
        rc, out, err = run_cli(["verify-trials", str(p), "--tokenizer", "tiny-llama"])
        if rc == 0 or (rc == 1 and "mismatch_count=" in out and not err.strip()):
            event("accepted")
            load_trials(p)  # it accepted the file: the file validates
            assert "trials checked" in out
        else:
            event("refused")
            assert_one_line_failure(rc, err, "trials.json")


@FUZZ
@given(data=st.one_of(_dataset_strategy().map(lambda b: ("dataset", b)), mutated_csv().map(lambda b: ("csv", b))))
def test_make_trials_answers_any_dataset_or_csv_in_one_line(data):
    kind, raw = data
    with _fuzzed_file("data.json" if kind == "dataset" else "rel.csv", raw) as src:
        out_dir = src.parent / "out"
        args = ["--dataset", str(src), "--n-trials", "2", "--n-shots", "2"] if kind == "dataset" else \
            ["--relation-csv", str(src), "--n-trials-per-q", "1", "--n-demos", "2"]
        rc, _, err = run_cli(["make-trials", *args, "--out", str(out_dir / "t.json"), "--tokenizer", "tiny-llama"])
        if rc == 0:
            event(f"{kind} accepted")
            assert len(load_trials(out_dir / "t.json").trials) >= 1
        else:
            event(f"{kind} refused")
            assert_one_line_failure(rc, err, src.name)
            _assert_nothing_written(out_dir)


@FUZZ_RUN
@given(data=_trials_strategy())
def test_run_answers_any_trials_file_in_one_line(data):
    with _fuzzed_file("trials.json", data) as p:
        out_dir = p.parent / "out"
        try:
            first = json.dumps(load_trials(p).raw["trials"][0], sort_keys=True)
        except FVError:
            first = None  # the command must say so itself, below
        if first in _RUN_DONE:
            event("accepted, first trial already run")
            return
        rc, _, err = run_cli(["run", "--fixed-trials", str(p), "--out", str(out_dir), *RUN_ARGS, "--mode", "fast"])
        if rc == 0:
            event("accepted and run")
            _RUN_DONE.add(first)
        if rc == 0:
            side = SideFolder.open(out_dir, "fv")  # the dump and top heads validate against their schemas
            assert side.dump is not None and len(side.dump["trials"]) == 1
            assert read_json(out_dir / "eval_summary.json")["edit_layer"] == 1
            assert not (out_dir / HOLDER_NAME).exists()
        else:
            event("refused")
            assert_one_line_failure(rc, err, "trials.json")
            _assert_nothing_written(out_dir)
