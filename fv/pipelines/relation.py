"""M7: the per-q relation pipeline, resumable, one q at a time or spread over worker processes.

For a relation CSV, fixed trials are made once for all eligible qs (one ``random.Random(seed)`` stream, as
docs/reference.md says), then each q runs the fv runtime on its own trials: mean activations, the indirect-effect sweep
over every head (``aie_scores.csv``), top-k heads, the FV, and zero-shot injection at every edit layer (one
folder per layer, ``step6_all_layers_summary.json`` naming the best). Each q's ``qid_status.json`` moves
through pending, running, completed, failed or skipped, so a run killed in the middle redoes only what is
not completed. qs are independent: ``workers`` processes each load the model once and take their share, or
a scheduler's job array runs them (fv.pipelines.relation_array).

Who writes what, when several processes share a relation's folder (fv.lock): the command (``fv relation``,
the in-process run or the job array's driver) holds the folder's writer lock, so a second command on it
refuses; whoever runs a q holds that q folder's lock for its duration, so no two processes ever write one
q's files; and the files every process updates (each ``qid_status.json``, and ``relation_summary.json``,
which lists every q's state as it changes) are changed only by read-modify-write under the folder's short
state lock, so tasks finishing at once never lose an update.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from fv.errors import FVError
from fv.io import ensure_dir, load_tensor_file, read_json, sha256_file, write_json, write_text
from fv.lock import LOCK_NAME, held_by, output_lock, state_lock
from fv.meta import now_iso
from fv.pipelines.threads import cpu_threads

STATES = ("pending", "running", "completed", "failed", "skipped")
SUMMARY = "relation_summary.json"


@dataclass
class RelationConfig:
    relation_csv: str
    out: str
    model: str | None = None
    device: str | None = "auto"
    dtype: str | None = "float32"
    q_list: Sequence[str] | None = None
    n_trials_per_q: int = 25
    n_demos: int = 9
    topk: int = 20
    seed: int = 0
    edit_layers: str = "all"
    mode: str = "exact"
    workers: int = 1
    stop_on_error: bool = False
    # a user's existing all-q sampled-trials file, run on exactly its trials instead of drawing new ones
    fixed_trials: str | None = None
    # CPU matrix kernels sum in an order that depends on their thread count; a fixed count per q keeps results
    # independent of how many workers share the machine. Parallelism on the CPU comes from --workers.
    cpu_threads: int = 1

    def q_key(self, lm: Any, trials_sha256: str) -> dict:
        """What one q's outputs depend on: the model's weights and loading, the q's own trials, and the stage
        parameters. Not the list of other qs, nor how a default was spelled: a q completed under the same
        identity is never recomputed."""
        return self.q_identity({"model_config_sha256_16": lm.config_hash, "model_name": lm.name,
                                "dtype": str(lm.dtype).replace("torch.", ""), "device_type": str(lm.device).split(":")[0]},
                               trials_sha256)

    def q_identity(self, model: dict, trials_sha256: str) -> dict:
        """``q_key`` from the model's part of it (``model``: its config digest, name and dtype, and its device type
        where the model is loaded; a job array's driver, which loads no weights, knows all but the device)."""
        return {**model, "trials_sha256": trials_sha256, "n_demos": self.n_demos, "topk": self.topk,
                "edit_layers": self.edit_layers, "mode": self.mode, "cpu_threads": self.cpu_threads}


def relation_root(cfg: RelationConfig) -> Path:
    """``<out>/<relation CSV stem>``, or ``<out>/<trials file stem>`` for a run on a user's trials file."""
    return Path(cfg.out) / Path(cfg.fixed_trials or cfg.relation_csv).stem


def read_relation_trials(path: str | Path, q_list: Sequence[str] | None = None) -> dict:
    """A user's all-q sampled-trials file as ``make_relation_trials`` returns one: its trials untouched and in file
    order, ``meta.q_ids`` the qs it holds (or those of ``q_list``), ``meta.skipped_qs`` as the file says."""
    from fv.runtime.trials import load_trials

    ft = load_trials(path)
    if any(t.q_id is None for t in ft.trials):
        raise FVError(f"fixed-trials file {path}: expected relation trials (each with q_id), found ICL trials (trial_id). "
                      "Give an all-q sampled-trials file, or run ICL trials with `fv runtime run --fixed-trials`.")
    meta = dict(ft.raw.get("meta") or {})
    present = list(dict.fromkeys(t.q_id for t in ft.trials))
    qs = [q for q in meta.get("q_ids") or [] if q in present] or sorted(present)
    if q_list:
        missing = [q for q in q_list if q not in present]
        if missing:
            raise FVError(f"--q-list names {missing}, which {path} has no trials for; it has {sorted(present)}.")
        qs = list(q_list)
    trials = [t for t in ft.raw["trials"] if t["q_id"] in qs]
    n_demos = len(trials[0]["demos_clean"])
    return {"meta": {**meta, "q_ids": qs, "skipped_qs": meta.get("skipped_qs", []), "n_demos": n_demos}, "trials": trials}


def per_q_trials_name(cfg: RelationConfig, q: str) -> str:
    """File name of q's trials file: from the user's ``--fixed-trials`` stem, or from the relation CSV's stem,
    trial count, demo count and seed.
    """
    if cfg.fixed_trials:
        return f"fixed_trials_{Path(cfg.fixed_trials).stem}_{q}.json"
    return f"fixed_trials_{Path(cfg.relation_csv).stem}_{q}_t{cfg.n_trials_per_q}_d{cfg.n_demos}_seed{cfg.seed}.json"


def _status_path(root: Path, q: str) -> Path:
    return root / q / "qid_status.json"


def read_status(root: Path, q: str) -> dict:
    """q's ``qid_status.json`` record, or ``{"q_id": q, "status": "pending"}`` when it has none yet (read without
    the state lock).
    """
    p = _status_path(root, q)
    return json.loads(p.read_text()) if p.is_file() else {"q_id": q, "status": "pending"}


def _set_status(root: Path, q: str, status: str, inputs: dict, **extra: Any) -> None:
    assert status in STATES
    _write_status(root, q, {"q_id": q, "status": status, "inputs": inputs, **extra})


def update_status(root: Path, q: str, change: Callable[[dict], dict | None]) -> dict:
    """Read-modify-write of ``q``'s status under the state lock: ``change(current)`` returns the new record,
    or None to leave it. For a writer that decides from what is there (the driver marking a task's qs, which
    the task may be moving on at the same moment); returns the record as it stands afterwards."""
    with state_lock(root):
        st = read_status(root, q)
        new = change(st)
        if new is None:
            return st
        assert new.get("status") in STATES
        _write_status(root, q, new)
        return new


def _write_status(root: Path, q: str, record: dict) -> None:
    """The q's ``qid_status.json`` and its entry in the summary, together under the state lock."""
    with state_lock(root):
        write_json(_status_path(root, q), record)
        path = root / SUMMARY
        if path.is_file():
            summary = json.loads(path.read_text())
            if q in summary.get("q_ids", []):
                write_json(path, _with_q(summary, record))


def prepare_trials(cfg: RelationConfig, tokenizer: Any, model_name: str, prepend_bos: bool) -> tuple[list[str], list[dict], Path]:
    """Make the all-q trials file once (or take the user's, ``cfg.fixed_trials``), split it into one trials file
    per listed q; returns (qs, skipped, root).

    The trials are drawn for every q of the CSV, as the users' own sampler does over a whole file (one random
    stream over the qs in sorted order, then one shuffle), and the listed qs are taken from that draw. A q's
    trials file (its bytes, so its sha256 and its identity in ``RelationConfig.q_key``) therefore never depends
    on ``--q-list``: growing the list recomputes nothing that completed. Raises FVError for a q the CSV or the
    trials file does not have, or when no listed q has ``n_demos + 1`` rows."""
    from fv.runtime.datasets import load_relation_csv
    from fv.runtime.trials import make_relation_trials, plan_relation_qs, save_trials

    root = ensure_dir(relation_root(cfg))
    if cfg.fixed_trials:
        from fv.runtime.trials import load_trials, require_tokenizer_agrees

        listed = read_relation_trials(cfg.fixed_trials, cfg.q_list)  # checks the listed qs are in the file
        raw = read_relation_trials(cfg.fixed_trials)  # the whole file: per-q meta never names the q-list
        require_tokenizer_agrees(load_trials(cfg.fixed_trials), tokenizer)
        qs, skipped = listed["meta"]["q_ids"], listed["meta"]["skipped_qs"]
    else:
        plan = plan_relation_qs(load_relation_csv(cfg.relation_csv), cfg.n_demos, cfg.q_list)
        if not plan.q_ids:
            raise FVError(f"relation CSV {cfg.relation_csv}: none of the qs {[s['q_id'] for s in plan.skipped]} has the "
                          f"{cfg.n_demos + 1} rows that --n-demos {cfg.n_demos} needs. List other qs or use fewer --n-demos.")
        raw = make_relation_trials(cfg.relation_csv, tokenizer, cfg.n_trials_per_q, cfg.n_demos, cfg.seed, None,
                                   model_name_for_tokenizer=model_name, model_prepend_bos=prepend_bos)
        qs, skipped = plan.q_ids, plan.skipped
    raw = json.loads(json.dumps(raw))  # as it reads back from disk (lists, not tuples): rewritten only when it changes
    all_q = root / "fixed_trials_all_q.json"
    if not all_q.is_file() or json.loads(all_q.read_text()) != raw:
        save_trials(all_q, raw)
    for q in qs:
        mine = {"meta": {**raw["meta"], "q_id": q}, "trials": [t for t in raw["trials"] if t["q_id"] == q]}
        path = root / q / per_q_trials_name(cfg, q)
        if not path.is_file() or json.loads(path.read_text()) != mine:
            save_trials(path, mine)
    return qs, skipped, root


def q_trials_path(root: Path, q: str) -> Path:
    """The ``fixed_trials_*.json`` file in q's folder (the first by name). Raises FVError when there is none."""
    hits = sorted((root / q).glob("fixed_trials_*.json"))
    if not hits:
        raise FVError(f"no trials file for {q} under {root / q}")
    return hits[0]


def _aie_csv(ie) -> str:
    mean = ie.mean(dim=0)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["layer", "head", "mean_indirect_effect", "n_trials"])
    for layer in range(mean.shape[0]):
        for head in range(mean.shape[1]):
            w.writerow([layer, head, repr(float(mean[layer, head])), ie.shape[0]])
    return buf.getvalue()


def q_folders_in_use(root: Path) -> None:
    """Refuse, in one line naming the holder, when a process still runs a q in ``root`` (a task of an array
    submitted earlier with --no-wait, or a run on another --executor): taking its qs over would write beside it."""
    if not root.is_dir():
        return
    for d in sorted(root.iterdir()):
        if (d / LOCK_NAME).is_file() and (who := held_by(d)):
            raise FVError(f"q {d.name} of {root} is being run by {who}; this run refuses to take its qs over. Wait for "
                          f"it to finish (`fv relation status {root}`), or choose another --out.")


def run_q(lm: Any, cfg: RelationConfig, root: Path, q: str, log: Callable[[str], None] = lambda _s: None) -> dict:
    """The whole runtime for one q; the caller records the status."""
    from fv.pipelines.run import RunConfig, best_layer, parse_layers, run_runtime
    from fv.runtime.trials import load_trials

    ft = load_trials(q_trials_path(root, q))
    out = root / q
    layers = parse_layers(cfg.edit_layers, lm.info.n_layers, min(9, lm.info.n_layers - 1))
    rc = RunConfig(n_top_heads=min(cfg.topk, lm.info.n_layers * lm.info.n_heads), edit_layers=layers, mode=cfg.mode,
                   resume=True, per_layer_folders=True, extra_meta={"q_id": q})
    res = run_runtime(lm, ft, out, rc, log=lambda line: log(f"{q}: {line}"))
    log(f"{q}: computed {', '.join(res.computed) or 'nothing'}; reused {', '.join(res.reused) or 'nothing'}")
    write_text(out / "aie_scores.csv", _aie_csv(load_tensor_file(out / "indirect_effect.pt")))
    summaries = {L: read_json(rc.step6_path(out, L))["summary"] for L in layers}
    best = best_layer(summaries)
    write_json(out / "step6_all_layers_summary.json", {
        "q_id": q, "best_layer": best, "criterion": "largest zero-shot mean delta log-prob of the target's first token",
        "layers": {str(L): {"zero_shot": s["by_prompt_set"]["zero_shot"], "shuffled": s["by_prompt_set"]["shuffled"]} for L, s in summaries.items()},
    })
    return {"best_layer": best, "n_trials": len(ft.trials)}


def run_worker(cfg_dict: dict, qs: list[str], root: str, index: int | None, extra: dict | None = None,
            log: Callable[[str], None] = lambda _s: None) -> list[tuple[str, str]]:
    """A worker process or a scheduler's array task: load the model once (on its own GPU when there are
    several), run its qs; ``extra`` (the task's job id and log) goes into the status of a q that fails."""
    cfg = RelationConfig(**cfg_dict)
    from fv.model.loading import load_model

    lm = load_model(cfg.model, cfg.device, cfg.dtype, worker=index)
    return [(q, _run_one(lm, cfg, Path(root), q, log=log, extra=extra)) for q in qs]


def _run_one(lm: Any, cfg: RelationConfig, root: Path, q: str, after_q: Callable[[str], None] | None = None,
             log: Callable[[str], None] = lambda _s: None, extra: dict | None = None) -> str:
    """Run ``q`` holding its folder's lock; a q whose folder another live process holds is left to it
    (``refused``, its status untouched)."""
    job = f" (job {extra['job_id']})" if extra and extra.get("job_id") else ""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(output_lock(root / q, command=f"fv relation: q {q}{job}", note=log))
        except FVError as exc:
            log(f"{q}: refused: {exc}")
            return "refused"
        return _run_one_locked(lm, cfg, root, q, after_q, log, extra)


def _run_one_locked(lm: Any, cfg: RelationConfig, root: Path, q: str, after_q: Callable[[str], None] | None,
                    log: Callable[[str], None], extra: dict | None) -> str:

    inputs = cfg.q_key(lm, sha256_file(q_trials_path(root, q)))
    st = read_status(root, q)
    if st.get("status") == "completed" and st.get("inputs") == inputs:
        log(f"{q}: reused (completed earlier with the same model, trials and parameters)")
        return "reused"
    if st.get("resumed_from") == "running":
        log(f"{q}: resumed (a previous run stopped while it was running; its finished stages are reused)")
    _set_status(root, q, "running", inputs, started=now_iso(), pid=os.getpid(), **(extra or {}))
    try:
        with cpu_threads(cfg.cpu_threads, lm.device):  # restored when the q ends, failed or not
            result = run_q(lm, cfg, root, q, log)
    except Exception as exc:  # one q's failure is recorded and does not stop the others
        from fv.runtime.finite import NonFiniteError

        _set_status(root, q, "failed", inputs, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=5),
                    **(extra or {}))
        log(f"{q}: failed: {type(exc).__name__}: {exc}")
        if cfg.stop_on_error or isinstance(exc, NonFiniteError):
            # a NaN or an infinity comes from the model in its dtype, not from this q: the run stops, in one line
            if isinstance(exc, NonFiniteError) and not str(exc).startswith(f"q {q}: "):
                raise NonFiniteError(f"q {q}: {exc}", exc.stage, exc.where) from exc
            raise
        return "failed"
    _set_status(root, q, "completed", inputs, **result)
    if after_q:
        after_q(q)
    return "completed"


def run_relation(cfg: RelationConfig, after_q: Callable[[str], None] | None = None, log: Callable[[str], None] = lambda s: None,
                 quiet: bool = True) -> dict:
    """Run every eligible q, resuming where a previous run stopped; returns the run summary."""
    from fv.model.loading import load_model
    from fv.progress import stage_bar

    lm = load_model(cfg.model, cfg.device, cfg.dtype)
    qs, skipped, root = start_run(cfg, lm.tokenizer, lm.name, lm.prepend_bos, log)
    results: dict[str, str] = {}
    if cfg.workers <= 1:
        with stage_bar("qs", len(qs), quiet, unit="q") as tick:
            for i, q in enumerate(qs, 1):
                results[q] = _run_one(lm, cfg, root, q, after_q, log)
                log(f"[{i}/{len(qs)}] {q}: {results[q]}")
                tick(1)
    else:
        import concurrent.futures as cf
        import multiprocessing as mp

        del lm
        shares = [qs[i :: cfg.workers] for i in range(cfg.workers)]
        with cf.ProcessPoolExecutor(cfg.workers, mp_context=mp.get_context("spawn")) as pool, \
                stage_bar("qs", len(qs), quiet, unit="q") as tick:
            futs = [pool.submit(run_worker, asdict(cfg), share, str(root), i) for i, share in enumerate(shares) if share]
            for f in cf.as_completed(futs):
                for q, status in f.result():
                    results[q] = status
                    log(f"{q}: {status}")
                    tick(1)
    # from the status files, not from ``results``: a q refused here is reported as its holder left it
    summary = write_summary(cfg.relation_csv, root, qs, skipped, {q: read_status(root, q).get("status") for q in qs})
    return {**summary, "reused": [q for q in qs if results.get(q) == "reused"]}


def start_run(cfg: RelationConfig, tokenizer: Any, model_name: str, prepend_bos: bool,
              log: Callable[[str], None] = lambda _s: None) -> tuple[list[str], list[dict], Path]:
    """Trials made, skipped qs recorded, and every q not completed set back to pending (a q left running by a
    process that is gone is taken over; one a live process holds is refused), and the summary written with
    every q's state; returns (qs, skipped, root)."""
    q_folders_in_use(relation_root(cfg))
    qs, skipped, root = prepare_trials(cfg, tokenizer, model_name, prepend_bos)
    for s in skipped:
        _set_status(root, s["q_id"], "skipped", {}, reason=s["reason"], n_rows=s["n_rows"])
        log(f"skipped {s['q_id']}: {s['n_rows']} rows ({s['reason']})")

    def reset(st: dict) -> dict | None:
        if st.get("status") == "running":  # its process is gone (its q folder is not held): this run takes it over
            return {"q_id": st["q_id"], "status": "pending", "inputs": st.get("inputs", {}), "resumed_from": "running"}
        if st.get("status") != "completed":
            return {"q_id": st["q_id"], "status": "pending", "inputs": st.get("inputs", {})}
        return None

    for q in qs:
        update_status(root, q, reset)
    write_summary(cfg.relation_csv, root, qs, skipped, {q: read_status(root, q).get("status") for q in qs})
    return qs, skipped, root


def write_summary(relation_csv: str, root: Path, qs: list[str], skipped: list[dict], status: dict[str, str | None]) -> dict:
    """The merged all-q summary, ``relation_summary.json``: per q its status and best layer. The same bytes
    whichever executor ran the qs. Written under the state lock, so it never overwrites a newer q state
    with an older one."""
    with state_lock(root):
        best = {}
        for q in qs:
            st = read_status(root, q)
            if st.get("status") == "completed":
                best[q] = st.get("best_layer")
        summary = _summary(relation_csv, str(root), qs, skipped, status, best)
        write_json(root / SUMMARY, summary)
    return summary


def _summary(relation_csv: str, root: str, qs: list[str], skipped: list[dict], status: dict[str, str | None],
             best: dict[str, Any]) -> dict:
    return {"relation_csv": relation_csv, "root": root, "q_ids": qs, "skipped": skipped, "status": {q: status.get(q) for q in qs},
            "best_layer": {q: best[q] for q in qs if q in best}, "failed": [q for q in qs if status.get(q) == "failed"]}


def _with_q(summary: dict, record: dict) -> dict:
    """``summary`` with one q's entry as ``record`` (its new ``qid_status.json``) says."""
    q = record["q_id"]
    status = {**summary.get("status", {}), q: record["status"]}
    best = {k: v for k, v in summary.get("best_layer", {}).items() if k != q}
    if record["status"] == "completed":
        best[q] = record.get("best_layer")
    return _summary(summary["relation_csv"], summary["root"], summary["q_ids"], summary.get("skipped", []), status, best)
