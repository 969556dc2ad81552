"""Fast mode in float16/bfloat16: the comparison rules it relies on (fv checking itself; no model needed).

Float16 logits near 16 step by 1/64, so the top-k token ids of two runs that agree within the float16 tolerance
can swap where logits tie. Seen on a float16 Llama in fast mode: the injection stage reported a mismatch with
"max abs diff inf" although no logit overflowed: the inf was the size given to a differing token id.
"""

from __future__ import annotations

from functools import partial

from fv.parity.compare import EXACT, FP16
from fv.parity.json_diff import walk_diffs as walk_any
from fv.parity.score_diff import SCORE_RULES

walk_diffs = partial(walk_any, rules=SCORE_RULES)  # the injection stage's scored prompts, as its comparer walks them


def _score(ids, logits):
    return {"target_id": 7, "logit": logits[0], "pred_id": ids[0], "top_ids": ids, "top_logits": logits}


def test_ids_that_swap_where_logits_tie_agree_under_a_tolerance():
    a = _score([1, 2, 3], [16.0, 15.984375, 15.0])
    b = _score([2, 1, 3], [16.0, 15.984375, 15.0])
    assert list(walk_diffs(a, b, FP16)) == []
    assert {p for p, *_ in walk_diffs(a, b, EXACT)} == {"pred_id", "top_ids[0]", "top_ids[1]"}  # the exact gate stays exact


def test_ids_that_swap_across_a_real_gap_still_differ():
    a = _score([1, 2, 3], [16.0, 15.0, 14.0])
    b = _score([2, 1, 3], [16.0, 15.0, 14.0])
    assert {p for p, *_ in walk_diffs(a, b, FP16)} >= {"pred_id", "top_ids[0]", "top_ids[1]"}


def test_without_the_scores_rules_ids_are_labels_compared_exactly():
    """The generic JSON walk knows no field by name: only the scored prompts' comparer lets ids trade ranks."""
    a = _score([1, 2, 3], [16.0, 15.984375, 15.0])
    b = _score([2, 1, 3], [16.0, 15.984375, 15.0])
    assert {p for p, *_ in walk_any(a, b, FP16)} == {"pred_id", "top_ids[0]", "top_ids[1]"}


def test_an_id_cut_off_from_the_other_list_must_tie_with_its_last():
    a = _score([1, 2, 3], [16.0, 15.0, 14.0])
    assert list(walk_diffs(a, _score([1, 2, 9], [16.0, 15.0, 14.0]), FP16)) == []
    assert list(walk_diffs(a, _score([1, 9, 3], [16.0, 15.0, 14.0]), FP16))
