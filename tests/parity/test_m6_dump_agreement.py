"""M6: a fresh reference dump and a fresh fv run on the same trials agree everywhere, suite and trial level."""

from __future__ import annotations

import json

import pytest

from fv.parity.compare import EXACT, walk_diffs
from fv.parity.diff import diff_folders, write_diff_report

pytestmark = pytest.mark.m6


@pytest.fixture(scope="session")
def m6_report(reference_dir, runtime_dir, tmp_path_factory):
    report = diff_folders(reference_dir, runtime_dir, EXACT)
    write_diff_report(dict(report), tmp_path_factory.mktemp("m6"))
    return report


def test_suite_level(m6_report):
    bad = [s for s in m6_report["stages"] if s["mismatch_count"] or s["status"] != "PASS"]
    assert m6_report["mismatch_count"] == 0, bad
    assert m6_report["first_divergence"] is None, m6_report["first_divergence"]


def test_trial_level(reference_dir, runtime_dir, trial_index):
    src = json.loads((reference_dir / "src_reference_dump.json").read_text())["trials"]
    fv = json.loads((runtime_dir / "fv_runtime_dump.json").read_text())["trials"]
    if trial_index >= len(src):
        pytest.skip(f"{len(src)} trials compared")
    a = src[trial_index]
    b = next(t for t in fv if (t["trial_id"], t["trial_idx"]) == (a["trial_id"], a["trial_idx"]))
    mismatches = list(walk_diffs({k: v for k, v in a.items()}, {k: v for k, v in b.items()}, EXACT))
    assert len(mismatches) == 0, mismatches[:10]
