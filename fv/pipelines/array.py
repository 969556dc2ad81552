"""One way to run a job array: submit one task per group of items, record the submission, follow the tasks with
a bar and hand each ending to the driver. The relation run (items: qs), the universal FV (items: tasks, per
phase) and the M7 gate (items: qs) all go through :func:`run_array`; only what a task runs and what its ending
means differ, and those stay with each driver.

A task's ending is reported once: ``on_result(task, result)`` when its function returned, ``on_lost(task, why)``
when it ended without a result (cancelled, timed out, out of memory, node failure); ``why`` is one line naming
the error. The submission record (``submission.json`` in ``folder``) lists every task with its items, job id and
scheduler logs, so ``fv relation status`` and a person can find them later.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from fv.pipelines.cluster import ClusterConfig, array_id, job_record, make_executor, save_submission, wait_jobs

SUBMISSION = "submission.json"


@dataclass
class ArrayTask:
    """One submitted task: its index in the array, its items and the scheduler's record (job id and logs)."""

    index: int
    items: list[str]
    record: dict

    @property
    def job_id(self) -> str:
        return self.record["job_id"]

    @property
    def log(self) -> str:
        return self.record["stderr"]


def groups_of(items: Sequence[str], per_task: int) -> list[list[str]]:
    """``items`` in order, ``per_task`` to a task (the last task may hold fewer)."""
    per = max(1, int(per_task or 1))
    return [list(items[i : i + per]) for i in range(0, len(items), per)]


def ended_without_result(error: BaseException) -> str:
    """One line for a task that ended without a result: the error's type and its first non-empty line."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def run_array(cc: ClusterConfig, folder: Path, name: str, fn: Callable[..., Any], shared: Sequence[Any],
              groups: Sequence[list[str]], *, on_result: Callable[[ArrayTask, Any], None],
              on_lost: Callable[[ArrayTask, str], None], on_submitted: Callable[[list[ArrayTask]], None] = lambda _t: None,
              bar: tuple[str, int, int] | None = None, unit: str = "item", progress: Callable[[], int] | None = None,
              wait: bool = True, record: dict | None = None, item_key: str = "items", quiet: bool = True,
              log: Callable[[str], None] = lambda _s: None) -> tuple[str | None, list[ArrayTask]]:
    """Submit ``fn(*shared, group)`` once per group as one array of ``cc.executor`` tasks named ``name``, with
    logs under ``folder/<job id>/`` and the submission record at ``folder/submission.json`` (``record``'s keys
    added; each task's items under ``item_key``, ``qs`` or ``tasks`` as the driver calls them); then, with
    ``wait``, follow every task to its end.

    ``bar`` is ``(label, total items, items already done)`` for the progress bar; each task ticks its items when it
    ends, or, with ``progress`` (a count of finished items read from disk), as they finish. Returns the array's id
    (None when there was nothing to submit) and the tasks.
    """
    from fv.progress import stage_bar

    jobs: list[Any] = []
    tasks: list[ArrayTask] = []
    if groups:
        ex = make_executor(cc, folder / "%j", name=name)
        jobs = ex.map_array(fn, *[[a] * len(groups) for a in shared], list(groups))
        tasks = [ArrayTask(i, list(g), job_record(j)) for i, (j, g) in enumerate(zip(jobs, groups))]
    aid = array_id(jobs) if jobs else None
    on_submitted(tasks)
    save_submission(folder / SUBMISSION, cc.executor, cc, [{**t.record, item_key: t.items} for t in tasks],
                    {**(record or {}), "array_id": aid})
    if tasks:
        log(f"submitted {sum(len(g) for g in groups)} {unit}s as {len(tasks)} {cc.executor} tasks, job {aid}; logs in {folder}")
    if not wait or not tasks:
        return aid, tasks
    label, total, before = bar or (f"{unit}s", sum(len(g) for g in groups), 0)
    with stage_bar(label, total, quiet, unit=unit) as tick:
        tick(before)
        shown = 0

        def on_poll() -> None:
            nonlocal shown
            if progress is not None and (n := progress()) > shown:
                tick(n - shown)
                shown = n

        def on_done(i: int, result: Any, error: BaseException | None) -> None:
            if error is not None:
                on_lost(tasks[i], ended_without_result(error))
            else:
                on_result(tasks[i], result)
            if progress is None:
                tick(len(tasks[i].items))

        wait_jobs(jobs, on_done, on_poll, cc.poll_s)
        on_poll()
    return aid, tasks
