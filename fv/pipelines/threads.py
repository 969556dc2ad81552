"""torch's CPU thread count for the span of a stage, restored after it: the relation and universal drivers run each
q or task with the threads their config names (a verdict never depends on the count; a run's speed does)."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch


@contextlib.contextmanager
def cpu_threads(n: int | None, device: Any) -> Iterator[None]:
    """Within the block, torch computes on ``n`` CPU threads (unchanged where ``n`` is 0 or None, or the model is on a
    GPU); the count before it is restored on exit, an exception included."""
    before = torch.get_num_threads()
    if n and not str(device).startswith("cuda"):
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
