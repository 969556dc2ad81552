"""Issue 15, validation at the door: each bad input a new user met is answered in one line, by the command itself,
naming the file, the place (JSON path, CSV line and column) and what was expected and found, and nothing is written."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from fv.errors import FVError
from fv.io import read_json
from fv.parity.diff import SideFolder
from fv.paths import FIXTURES
from fv.runtime.datasets import load_icl_dataset, load_relation_csv
from fv.runtime.trials import load_trials, validate_trials
from fv.schema import text_difference
from tests.support.cli import RUN_ARGS, assert_one_line_failure, run_cli
from tests.support.tiny_trials import base_trials


def write(path: Path, obj, encoding: str = "utf-8") -> Path:
    path.write_bytes(json.dumps(obj, ensure_ascii=False).encode(encoding))
    return path


@pytest.fixture
def icl(tmp_path):
    return copy.deepcopy(base_trials("icl"))


def test_examples_as_a_string_is_one_line_before_anything_is_written(tmp_path, icl):
    icl["trials"][1]["prompt_data_clean"]["examples"] = "not a list"
    out = tmp_path / "out"
    rc, _, err = run_cli(["run", "--fixed-trials", str(write(tmp_path / "t.json", icl)), "--out", str(out), *RUN_ARGS])
    assert_one_line_failure(rc, err, "t.json", "trials[1].prompt_data_clean.examples", "expected a list", "found a string")
    assert not out.exists()


@pytest.mark.parametrize("encoding, needle", [("utf-16", "UTF-16"), ("utf-32", "UTF-32")])
def test_relation_csv_in_another_encoding_is_named(tmp_path, encoding, needle):
    csv = tmp_path / "rel.csv"
    csv.write_bytes((FIXTURES / "relation_tiny.csv").read_text(encoding="utf-8").encode(encoding))
    out = tmp_path / "t.json"
    rc, _, err = run_cli(["make-trials", "--relation-csv", str(csv), "--out", str(out), "--n-demos", "2"])
    assert_one_line_failure(rc, err, "rel.csv", needle, "Save it as UTF-8")
    assert not out.exists()


def test_relation_csv_with_binary_bytes_names_the_byte_and_line(tmp_path):
    data = (FIXTURES / "relation_tiny.csv").read_bytes()
    cut = data.index(b"\n", data.index(b"\n") + 1) + 1  # start of line 3
    csv = tmp_path / "rel.csv"
    csv.write_bytes(data[:cut] + b"Q1,\xff\xfe\x80,x\n" + data[cut:])
    rc, _, err = run_cli(["make-trials", "--relation-csv", str(csv), "--out", str(tmp_path / "t.json"), "--n-demos", "2"])
    assert_one_line_failure(rc, err, "not UTF-8", "byte 0xFF", "line 3")
    csv.write_bytes(data[:cut] + b"\x00\x01\x02binary" + data[cut:])
    rc, _, err = run_cli(["make-trials", "--relation-csv", str(csv), "--out", str(tmp_path / "t.json"), "--n-demos", "2"])
    assert_one_line_failure(rc, err, "NUL byte", "line 3", "binary")


def test_prompt_mismatch_shows_where_the_strings_differ(tmp_path, icl):
    s = icl["trials"][2]["corrupted_prompt_str"]
    at = len(s) - 12
    icl["trials"][2]["corrupted_prompt_str"] = s[:at] + "#" + s[at + 1:]
    with pytest.raises(FVError) as exc:
        validate_trials(icl, "t.json")
    msg = str(exc.value)
    assert "trials[2].corrupted_prompt_str" in msg and f"first difference at character {at}" in msg
    assert repr(s[at - 5:at + 1])[1:-1] in msg and "#" in msg  # context on both sides of the place
    assert "\n" not in msg


def test_text_difference_names_position_line_and_both_sides():
    a = "Q: a\nA: b\n\nQ: c\nA: d\n\nQ: e\nA:"
    b = a.replace("c", "x")
    d = text_difference(a, b, context=4)
    assert d.startswith("first difference at character 14 (line 4, column 4)")
    assert "expected '…\\nQ: c\\nA:…', found '…\\nQ: x\\nA:…'" in d
    assert "the found text ends there" in text_difference("abc", "ab")


@pytest.mark.parametrize("mutate, place, expected", [
    (lambda r: r["trials"][0].pop("answer_ids"), "trials[0].answer_ids", "missing"),
    (lambda r: r["trials"][1].__setitem__("answer_ids", []), "trials[1].answer_ids", "a non-empty list"),
    (lambda r: r["trials"][1]["answer_ids"].__setitem__(0, "5"), "trials[1].answer_ids[0]", "an integer >= 0"),
    (lambda r: r["trials"][2]["prompt_data_corrupted"]["examples"][1].__setitem__("output", None),
     "trials[2].prompt_data_corrupted.examples[1].output", "found null"),
    (lambda r: r["trials"][0]["prompt_data_clean"]["prefixes"].pop("input"), "trials[0].prompt_data_clean.prefixes.input", "missing"),
    (lambda r: r["trials"][0]["demos_clean"].pop(), "trials[0].demos_clean", "expected 2 entries"),
    (lambda r: r["trials"].append(copy.deepcopy(r["trials"][0])), "trials[3].trial_id", "already at trials[0]"),
    (lambda r: r["trials"][1].__setitem__("first_token_id", r["trials"][1]["first_token_id"] + 1), "trials[1].first_token_id", "answer_ids[0]"),
    (lambda r: r["trials"][1].__setitem__("target_str", " nope"), "trials[1].target_str", "query_target.output"),
    (lambda r: r["meta"].__setitem__("n_shots", 5), "meta.n_shots", "expected 2"),
    (lambda r: r.__setitem__("trials", {}), "trials", "a non-empty list"),
    (lambda r: r["splits"].__setitem__("train_indices", "0,1"), "splits.train_indices", "a list"),
])
def test_trials_schema_names_the_json_path(icl, mutate, place, expected):
    mutate(icl)
    with pytest.raises(FVError) as exc:
        validate_trials(icl, "t.json")
    msg = str(exc.value)
    assert msg.startswith(f"fixed-trials file t.json: {place}") and expected in msg and "\n" not in msg, msg


def test_relation_trials_with_an_empty_q_is_refused():
    raw = copy.deepcopy(base_trials("relation"))
    raw["trials"][0]["q_id"] = ""
    with pytest.raises(FVError, match=r"trials\[0\]\.q_id: expected a non-empty string, found an empty string"):
        validate_trials(raw, "r.json")


def test_the_users_file_and_every_file_fv_writes_still_load(tmp_path, fixture_data):
    assert len(load_trials(fixture_data / "fixed_trials_antonym_t10_s10_seed0.json").trials) == 10
    for kind in ("icl", "relation"):
        validate_trials(base_trials(kind), kind)
    # UTF-8 with a byte-order mark is UTF-8
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(base_trials("icl")).encode())
    assert len(load_trials(bom).trials) == 3
    csv = tmp_path / "bom.csv"
    csv.write_bytes(b"\xef\xbb\xbf" + (FIXTURES / "relation_tiny.csv").read_bytes())
    assert load_relation_csv(csv) == load_relation_csv(FIXTURES / "relation_tiny.csv")


def test_truncated_json_says_so(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps(base_trials("icl"))[:500])
    with pytest.raises(FVError, match=r"is not valid JSON \(line 1, column \d+: .*\) \(the file ends early: truncated\?\)"):
        read_json(p, "fixed-trials file")


def test_dataset_rows_are_named_by_index_and_key(tmp_path):
    rows = json.loads((FIXTURES / "antonym_tiny.json").read_text())
    rows[4]["output"] = ["a", "b"]
    p = write(tmp_path / "d.json", rows)
    with pytest.raises(FVError, match=r"dataset .*d\.json: \[4\]\.output: expected a string \(or a number\), found a list of 2"):
        load_icl_dataset(p)
    rows[4] = {"input": "x"}
    with pytest.raises(FVError, match=r"\[4\]\.output: missing"):
        load_icl_dataset(write(p, rows))


def test_relation_csv_empty_cell_is_named_by_line_and_column(tmp_path):
    lines = (FIXTURES / "relation_tiny.csv").read_text().splitlines()
    lines[3] = "Q1,bird,"
    p = tmp_path / "r.csv"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(FVError, match=r"r\.csv, line 4, column ex_B: expected a non-empty cell"):
        load_relation_csv(p)
    p.write_text("qq,a,b\nQ1,x,y\n")
    with pytest.raises(FVError, match=r"line 1: expected a header with columns id, ex_A, ex_B"):
        load_relation_csv(p)


def test_diff_folders_are_checked_when_opened(tmp_path):
    (tmp_path / "fv_runtime_dump.json").write_text(json.dumps({"meta": {}, "trials": [{"trial_id": 0, "trial_idx": "zero"}]}))
    with pytest.raises(FVError, match=r"--fv dump .*: trials\[0\]\.trial_idx: expected an integer >= 0, found a string 'zero'"):
        SideFolder.open(tmp_path, "fv")
    (tmp_path / "fv_runtime_dump.json").write_bytes("{}".encode("utf-16"))
    with pytest.raises(FVError, match="UTF-16"):
        SideFolder.open(tmp_path, "fv")
    (tmp_path / "fv_runtime_dump.json").write_text(json.dumps({"meta": {}, "trials": []}))
    (tmp_path / "top_heads.json").write_text(json.dumps([[0, 1, 0.5], [1, "x", 0.2]]))
    with pytest.raises(FVError, match=r"--fv top heads .*: \[1\]\[1\]: expected a number"):
        SideFolder.open(tmp_path, "fv")
