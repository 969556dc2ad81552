"""fv universal's ICL-baseline filter and aggregation on given numbers (no model pass): the strict rule, one task
kept and one dropped, the one-line refusal naming --task-filter all, and the AIE over kept tasks only."""

from __future__ import annotations

import pytest
import torch

from fv.errors import FVError
from fv.pipelines.universal import UniversalConfig
from fv.runtime.universal import (
    aie_by_task,
    average_indirect_effect,
    filter_tasks,
    icl_accuracy,
    keep_decision,
    majority_baseline,
    universal_heads,
)


def test_majority_baseline_and_icl_accuracy():
    targets = [5, 5, 7, 5, 9]
    assert majority_baseline(targets) == 3 / 5
    assert icl_accuracy([5, 1, 7, 2, 9], targets) == 3 / 5
    with pytest.raises(FVError, match="one top-1 id per trial"):
        icl_accuracy([5], targets)


def test_one_task_kept_one_dropped():
    rows = [{"name": "antonym", "icl_accuracy": 0.8, "majority_baseline": 0.2},
            {"name": "capitalize", "icl_accuracy": 0.1, "majority_baseline": 0.3}]
    got = filter_tasks(rows, "icl-baseline")
    assert [g["kept"] for g in got] == [True, False]
    assert "0.8000 > majority baseline 0.2000" in got[0]["reason"] and "<=" in got[1]["reason"]
    assert [g["kept"] for g in filter_tasks(rows, "all")] == [True, True]


def test_equal_accuracy_is_dropped_strictly():
    assert keep_decision(0.3, 0.3, "icl-baseline")[0] is False
    assert keep_decision(0.3000001, 0.3, "icl-baseline")[0] is True


def test_no_task_kept_refuses_naming_task_filter_all():
    rows = [{"name": "a", "icl_accuracy": 0.0, "majority_baseline": 0.1}, {"name": "b", "icl_accuracy": 0.1, "majority_baseline": 0.1}]
    with pytest.raises(FVError) as exc:
        filter_tasks(rows, "icl-baseline")
    msg = str(exc.value)
    assert "\n" not in msg and "--task-filter all" in msg and "a 0.00 <= 0.10" in msg


def test_aie_is_the_mean_over_kept_tasks_and_heads_its_topk():
    g = torch.Generator().manual_seed(0)
    effects = [torch.randn(3, 4, 2, generator=g), torch.randn(5, 4, 2, generator=g), torch.randn(2, 4, 2, generator=g)]
    by_task = aie_by_task(effects)
    assert by_task.shape == (3, 4, 2) and torch.equal(by_task[1], effects[1].mean(0))
    aie = average_indirect_effect(by_task, [True, False, True])
    assert torch.equal(aie, torch.stack([effects[0].mean(0), effects[2].mean(0)]).mean(0))
    heads = universal_heads(aie, 3)
    flat = sorted(((float(aie[l, h]), l, h) for l in range(4) for h in range(2)), reverse=True)[:3]
    assert [(l, h) for l, h, _ in heads] == [(l, h) for _, l, h in flat]
    assert all(s == round(v, 4) for (_, _, s), (v, _, _) in zip(heads, flat))
    with pytest.raises(FVError, match="--n-top-heads 9"):
        universal_heads(aie, 9)


def test_exactly_one_task_source():
    with pytest.raises(FVError, match="exactly one task source"):
        UniversalConfig(out="x")
    with pytest.raises(FVError, match="found --datasets, --relation-csv"):
        UniversalConfig(out="x", datasets=["a.json"], relation_csv="r.csv")
    with pytest.raises(FVError, match="--task-filter"):
        UniversalConfig(out="x", datasets=["a.json"], task_filter="best")
