"""The universal FV's stages (Todd et al., appendix G), apart from the driver that runs them over tasks
(fv.pipelines.universal): each task's ICL accuracy and majority baseline, the filter that keeps a task when its
ICL accuracy beats its baseline, the AIE over the kept tasks, and the universal heads (its top-k).

Shapes: a task's indirect effect is ``(trials, layers, heads)``; ``aie_by_task`` is ``(tasks, layers, heads)``;
the AIE ``(layers, heads)``; effects are in probability of the target's first token (as the reference's).
"""

from __future__ import annotations

import collections
from typing import Sequence

import torch

from fv.errors import FVError, UsageError

FILTERS = ("icl-baseline", "all")


# ---- ICL accuracy, majority baseline, filter ---------------------------------------------------------------
def majority_baseline(target_ids: Sequence[int]) -> float:
    """The share of the most frequent target first token among the trials."""
    if not target_ids:
        raise FVError("a task without trials has no majority baseline.")
    return collections.Counter(int(t) for t in target_ids).most_common(1)[0][1] / len(target_ids)


def icl_accuracy(top1_ids: Sequence[int], target_ids: Sequence[int]) -> float:
    """The share of trials whose clean ICL prompt puts the target's first token at top-1."""
    if len(top1_ids) != len(target_ids) or not target_ids:
        raise FVError(f"ICL accuracy needs one top-1 id per trial: {len(top1_ids)} ids for {len(target_ids)} trials.")
    return sum(int(a) == int(b) for a, b in zip(top1_ids, target_ids)) / len(target_ids)


def keep_decision(accuracy: float, baseline: float, task_filter: str) -> tuple[bool, str]:
    """Whether a task joins the AIE, and why in words. ``icl-baseline``: accuracy strictly above the baseline."""
    if task_filter == "all":
        return True, "--task-filter all keeps every task"
    if task_filter != "icl-baseline":
        raise UsageError(f"--task-filter: expected one of {', '.join(FILTERS)}, found {task_filter!r}.")
    if accuracy > baseline:
        return True, f"ICL accuracy {accuracy:.4f} > majority baseline {baseline:.4f}"
    return False, f"ICL accuracy {accuracy:.4f} <= majority baseline {baseline:.4f}"


def filter_tasks(rows: Sequence[dict], task_filter: str) -> list[dict]:
    """``rows`` (name, icl_accuracy, majority_baseline, ...) with ``kept`` and ``reason`` added; refuses in one
    line when no task is kept."""
    out = []
    for r in rows:
        kept, reason = keep_decision(float(r["icl_accuracy"]), float(r["majority_baseline"]), task_filter)
        out.append({**r, "kept": kept, "reason": reason})
    if not any(r["kept"] for r in out):
        raise FVError(f"no task is kept: on none of the {len(out)} tasks does the model's ICL accuracy beat the majority "
                      "baseline (" + ", ".join(f"{r['name']} {r['icl_accuracy']:.2f} <= {r['majority_baseline']:.2f}" for r in out)
                      + "); pass --task-filter all to average over every task anyway.")
    return out


# ---- the aggregation ---------------------------------------------------------------------------------------
def aie_by_task(effects: Sequence[torch.Tensor]) -> torch.Tensor:
    """(tasks, layers, heads): each task's (trials, layers, heads) indirect effect averaged over its trials."""
    return torch.stack([ie.mean(dim=0) for ie in effects])


def average_indirect_effect(by_task: torch.Tensor, kept: Sequence[bool]) -> torch.Tensor:
    """(layers, heads): the mean of ``by_task`` over the kept tasks."""
    idx = [i for i, k in enumerate(kept) if k]
    if not idx:
        raise FVError("the AIE needs at least one kept task; pass --task-filter all.")
    return by_task[idx].mean(dim=0)


def universal_heads(aie: torch.Tensor, n_top: int) -> list[tuple[int, int, float]]:
    """The top-k of the AIE as ``(layer, head, score)``, by the same ``topk`` over a ``(1, layers, heads)``
    tensor the reference's ``compute_function_vector`` runs (ties break as its do)."""
    from fv.runtime.top_heads import top_heads

    n = aie.numel()
    if not 1 <= n_top <= n:
        raise FVError(f"--n-top-heads {n_top}: this model has {n} heads (layers x heads); choose 1..{n}.")
    return top_heads(aie.unsqueeze(0), n_top)
