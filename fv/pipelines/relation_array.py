"""The per-q relation pipeline as a job array: one task per q (or per ``qs_per_task`` qs), on Slurm or locally.

The driver makes the trials (it needs the tokenizer, never the weights), submits the qs that are not completed
under the same identity, waits with a bar over qs and writes the same ``relation_summary.json`` as the
in-process run. Each task loads the model once and runs its qs exactly as ``run_relation`` does, so per-q
outputs are the same bytes. A task that ends without a result (cancelled, timed out, out of memory) has its
unfinished qs recorded as failed in their ``qid_status.json`` with its job id and scheduler log; the other tasks
go on, and resubmitting the same command runs only what is missing. Preempted or timed-out tasks are requeued by
submitit (``Checkpointable``) and resume from their finished qs and stages.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import submitit

from fv.errors import FVError
from fv.io import read_json, sha256_file
from fv.lock import held_by
from fv.model.loading import light_model
from fv.pipelines.array import SUBMISSION, ArrayTask, groups_of, run_array
from fv.pipelines.cluster import ClusterConfig, job_state
from fv.pipelines.relation import RelationConfig, q_trials_path, read_status, relation_root, start_run, update_status, write_summary

JOBS_DIR = "_jobs"


class RelationTask(submitit.helpers.Checkpointable):
    """One array task: load the model once, run its qs. On preemption or time-out submitit requeues the same
    call; completed qs are then reused and a q cut short resumes from its finished stages."""

    def __call__(self, cfg_dict: dict, root: str, qs: list[str]) -> list[tuple[str, str]]:
        from fv.pipelines.relation import run_worker

        env = submitit.JobEnvironment()
        extra = {"job_id": str(env.job_id), "scheduler_log": str(env.paths.stderr).replace("%j", str(env.job_id))}
        return run_worker(cfg_dict, qs, root, None, extra=extra, log=lambda line: print(line, flush=True))


def _is_done(cfg: RelationConfig, root: Path, q: str, ident: dict) -> bool:
    """Whether q is completed under the identity a driver can check without the weights (the task checks the rest,
    its device type, itself)."""
    st = read_status(root, q)
    if st.get("status") != "completed":
        return False
    want = cfg.q_identity(ident, sha256_file(q_trials_path(root, q)))  # the q's identity, less its device type
    have = st.get("inputs", {})
    return all(have.get(k) == v for k, v in want.items())


def _record_lost(root: Path, qs: list[str], rec: dict, error: BaseException | str) -> list[str]:
    """The qs of a task that ended without finishing them: failed, with the task's id and log. Decided and
    written in one step under the state lock, so a q the task completed a moment ago stays completed; a q
    whose folder a live process holds (the task left it to that process) is that process's to record."""
    lost = []

    def fail(st: dict) -> dict | None:
        if st.get("status") in ("completed", "failed"):
            return None
        lost.append(st["q_id"])
        return {"q_id": st["q_id"], "status": "failed", "inputs": st.get("inputs", {}),
                "error": f"task {rec['job_id']} ended without finishing {st['q_id']}: {error}",
                "job_id": rec["job_id"], "scheduler_log": rec["stderr"]}

    for q in qs:
        if held_by(root / q) is None:
            update_status(root, q, fail)
    return lost


def run_relation_cluster(cfg: RelationConfig, cc: ClusterConfig, wait: bool = True, log: Callable[[str], None] = lambda s: None,
                         quiet: bool = True) -> dict:
    """Submit every q not yet completed as a job array; with ``wait`` follow it and return the merged summary,
    else return right after submission (``job_id`` set, no summary yet)."""
    tok, name, bos, ident = light_model(cfg.model, cfg.dtype)
    qs, skipped, root = start_run(cfg, tok, name, bos, log)
    todo = [q for q in qs if not _is_done(cfg, root, q, ident)]
    reused = [q for q in qs if q not in todo]
    for q in reused:
        log(f"{q}: reused (completed earlier with the same model, trials and parameters)")
    task_cfg = {**asdict(cfg), "workers": 1, "q_list": list(cfg.q_list) if cfg.q_list else None}

    def submitted(tasks: list[ArrayTask]) -> None:
        for t in tasks:
            for q in t.items:  # its task may have started (and moved the q on) already: only a pending q gets the job
                update_status(root, q, lambda st, t=t: {**st, "job_id": t.job_id, "scheduler_log": t.log}
                              if st.get("status") == "pending" else None)

    def lost(t: ArrayTask, why: str) -> None:
        gone = _record_lost(root, t.items, t.record, why)
        log(f"task {t.job_id} ended without a result; failed: {', '.join(gone) or 'none'}; log {t.log}")

    def result(t: ArrayTask, res: Any) -> None:
        for q, status in res:
            log(f"{q}: {status} (task {t.job_id})")

    job_id, _tasks = run_array(
        cc, root / JOBS_DIR, f"fv-relation-{relation_root(cfg).name}", RelationTask(), [task_cfg, str(root)],
        groups_of(todo, cc.qs_per_task), on_result=result, on_lost=lost, on_submitted=submitted,
        bar=("qs", len(qs), len(reused)), unit="q", wait=wait, quiet=quiet, log=log,
        progress=lambda: sum(read_status(root, q).get("status") in ("completed", "failed") for q in todo),
        record={"relation_csv": cfg.relation_csv, "q_ids": qs, "skipped": skipped}, item_key="qs")
    if not wait:
        return {"root": str(root), "job_id": job_id, "q_ids": qs, "submitted": todo, "reused": reused}
    return {**merge(root, cfg.relation_csv, qs, skipped), "job_id": job_id, "reused": reused}


def merge(root: Path, relation_csv: str, qs: list[str], skipped: list[dict]) -> dict:
    """The merged summary from the qs' own status files."""
    status = {q: read_status(root, q).get("status") for q in qs}
    return write_summary(relation_csv, root, qs, skipped, status)


def find_roots(out: str | Path) -> list[Path]:
    """Relation roots under ``out``: ``out`` itself when it holds a submission or summary, else its folders."""
    p = Path(out)
    if not p.is_dir():
        raise FVError(f"fv relation status: expected an output folder, found nothing at {p}")
    marks = (Path(JOBS_DIR) / SUBMISSION, Path("relation_summary.json"))
    if any((p / m).is_file() for m in marks):
        return [p]
    roots = sorted(d for d in p.iterdir() if d.is_dir() and any((d / m).is_file() for m in marks))
    if not roots:
        raise FVError(f"fv relation status: expected {p} to hold a relation run (its {JOBS_DIR}/{SUBMISSION} or relation_summary.json), found neither; pass the --out of `fv relation`")
    return roots


def relation_state(root: Path) -> dict:
    """The state of a run, submitted earlier, read back: each q's status and, for a q whose task the scheduler
    says has ended without finishing it, a failed status with the task's log. Writes the merged summary once no
    task is active."""
    sub_path = root / JOBS_DIR / SUBMISSION
    sub = read_json(sub_path) if sub_path.is_file() else {}
    summary = read_json(root / "relation_summary.json") if (root / "relation_summary.json").is_file() else {}
    qs = sub.get("q_ids") or summary.get("q_ids") or []
    active = []
    for t in sub.get("tasks", []):
        open_qs = [q for q in t["qs"] if read_status(root, q).get("status") in ("pending", "running")]
        if not open_qs:
            continue
        state = job_state(root / JOBS_DIR / t["job_id"], t["job_id"], sub.get("executor", "local"))
        if state.split()[0] in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "SUSPENDED", "PREEMPTED", "UNKNOWN", "READY"):
            active.append(t["job_id"])
        else:
            _record_lost(root, open_qs, t, f"the scheduler reports {state}")
    statuses = {q: read_status(root, q) for q in qs}
    out = {"root": str(root), "executor": sub.get("executor"), "array_id": sub.get("array_id"), "active_tasks": active,
           "q": {q: {k: st.get(k) for k in ("status", "best_layer", "job_id", "scheduler_log", "error") if st.get(k) is not None}
                 for q, st in statuses.items()}}
    if not active and qs:
        out["summary"] = merge(root, sub.get("relation_csv") or summary.get("relation_csv"), qs, sub.get("skipped", summary.get("skipped", [])))
    return out
