"""The universal FV (Todd et al., appendix G): one list of heads for a model, from the indirect effects averaged
over tasks, and each task's FV built from its own mean activations and those heads.

Per task (one fixed-trials file, or one q of a relation CSV):

- the mean head activations over its clean prompts and the indirect effect of every head over its
  shuffled-label prompts, ``(trials, layers, heads)``, exactly as ``fv run`` computes them (``--mode``);
- its **ICL accuracy**: the share of trials whose clean ICL prompt puts the target's first token at top-1;
- its **majority baseline**: the share of the most frequent target first token among its trials.

A task is **kept** when its ICL accuracy is strictly greater than its majority baseline (``--task-filter
icl-baseline``), or always (``all``). The **AIE** ``(layers, heads)`` is the mean over kept tasks of each task's
trial-mean indirect effect; the **universal heads** are its top-k (``torch.topk``, scores to 4 decimals as the
reference reports them). Each task's **universal FV** is the sum, over those heads, of the attention output
projection applied to the task's own last-slot mean activation: the arithmetic of the reference's
``compute_function_vector`` handed the AIE as a ``(1, layers, heads)`` tensor. It is then evaluated zero-shot
(and on the shuffled-label prompts) at each edit layer.

Files (all written atomically, so an interrupted run leaves nothing a resumed one would trust):
``aie_by_task.pt`` (tasks, layers, heads) float32, ``tasks.json``, ``aie.pt`` (layers, heads) float32,
``universal_top_heads.json`` ``[[layer, head, score], ...]``, and per task ``<task>/``: its trials file,
``mean_activations.pt`` (layers, heads, slots, head_dim), ``indirect_effect.pt`` (trials, layers, heads),
``icl.json``, ``fv_universal.pt`` (d_model,), ``universal_eval.json``.

Resume: a task's effects are reused when its ``effects_meta.json`` records the same identity (model config,
dtype, device type, the task's trials sha256, trial count, mode); its FV and evaluation when, besides, the
universal heads and edit layers are the same. Nothing depends on the other tasks except through the heads.
"""

from __future__ import annotations

import collections
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from fv.errors import FVError, UsageError
from fv.io import ensure_dir, load_tensor_file, read_json, save_tensors, sha256_file, write_bytes, write_json
from fv.runtime.resume import inputs_key, outputs_fresh
from fv.runtime.threads import cpu_threads

FILTERS = ("icl-baseline", "all")
TRIALS_FILE = "trials.json"
EFFECT_FILES = ("mean_activations.pt", "indirect_effect.pt", "icl.json")


@dataclass
class UniversalConfig:
    """What ``fv universal`` was asked; exactly one of ``datasets``, ``fixed_trials``, ``relation_csv``."""

    out: str
    model: str | None = None
    datasets: Sequence[str] | None = None
    fixed_trials: Sequence[str] | None = None
    relation_csv: str | None = None
    q_list: Sequence[str] | None = None
    n_top_heads: int = 10
    task_filter: str = "icl-baseline"
    mode: str = "exact"
    edit_layers: str | None = None  # "9", "A-B", "3,5", "all"; default: layer 9 (or the last)
    max_trials: int | None = None
    n_trials: int = 10  # --datasets: trials per task, shots, seed (as `fv make-trials`)
    n_shots: int = 10
    seed: int = 0
    n_trials_per_q: int = 25  # --relation-csv
    n_demos: int = 9
    device: str | None = "auto"
    dtype: str | None = "auto"
    cpu_threads: int | None = None

    def __post_init__(self) -> None:
        given = [n for n, v in (("--datasets", self.datasets), ("--fixed-trials", self.fixed_trials),
                                ("--relation-csv", self.relation_csv)) if v]
        if len(given) != 1:
            raise UsageError("expected exactly one task source: --datasets A.json,B.json, --fixed-trials F1.json,F2.json, or "
                          f"--relation-csv R.csv; found {', '.join(given) if given else 'none'}.")
        if self.task_filter not in FILTERS:
            raise UsageError(f"--task-filter: expected one of {', '.join(FILTERS)}, found {self.task_filter!r}.")
        if self.mode not in ("exact", "fast"):
            raise UsageError(f"--mode: expected exact or fast, found {self.mode!r}.")
        if self.n_top_heads < 1:
            raise UsageError(f"--n-top-heads: expected at least 1, found {self.n_top_heads}.")
        if self.max_trials is not None and self.max_trials < 1:
            raise UsageError(f"--max-trials: expected at least 1, found {self.max_trials}.")


@dataclass
class Task:
    name: str
    folder: Path

    @property
    def trials_path(self) -> Path:
        return self.folder / TRIALS_FILE


def _safe_name(name: str) -> str:
    bad = [c for c in name if not (c.isalnum() or c in "-_.")]
    if not name or bad or name.startswith("."):
        raise FVError(f"task name {name!r} cannot be a folder name (letters, digits, - _ . only); rename its file.")
    return name


# ---- the tasks ---------------------------------------------------------------------------------------------
def prepare_tasks(cfg: UniversalConfig, tokenizer: Any, model_name: str, prepend_bos: bool) -> list[Task]:
    """One folder per task under ``cfg.out`` holding its fixed trials (``trials.json``), written only when they
    differ from what is there; returns the tasks in the order given."""
    from fv.runtime.trials import load_trials, make_icl_trials, make_relation_trials, require_tokenizer_agrees, save_trials

    out = ensure_dir(cfg.out)
    tasks: list[tuple[str, dict | bytes]] = []
    if cfg.datasets:
        for ds in cfg.datasets:
            if not Path(ds).is_file():
                raise FVError(f"--datasets: {ds} not found; give ICL dataset JSON files (lists of {{input, output}}).")
            raw = make_icl_trials(ds, tokenizer, cfg.n_trials, cfg.n_shots, cfg.seed, model_name_for_tokenizer=model_name,
                                  model_prepend_bos=prepend_bos, prepend_bos_token_used=not prepend_bos,
                                  dataset_json_label=Path(ds).name)
            tasks.append((Path(ds).stem, raw))
    elif cfg.fixed_trials:
        for f in cfg.fixed_trials:
            ft = load_trials(f)
            if any(t.q_id is not None for t in ft.trials):
                raise FVError(f"--fixed-trials {f}: expected ICL trials (one file per task), found relation trials (q_id); "
                              "use --relation-csv, or split the file per q.")
            require_tokenizer_agrees(ft, tokenizer)
            tasks.append((ft.path.stem, ft.path.read_bytes()))  # used as given: the same bytes, the same sha256
    else:
        raw = make_relation_trials(cfg.relation_csv, tokenizer, cfg.n_trials_per_q, cfg.n_demos, cfg.seed, cfg.q_list,
                                   model_name_for_tokenizer=model_name, model_prepend_bos=prepend_bos)
        for q in raw["meta"]["q_ids"]:
            tasks.append((q, {"meta": {**raw["meta"], "q_id": q}, "trials": [t for t in raw["trials"] if t["q_id"] == q]}))
    names = [_safe_name(n) for n, _ in tasks]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise FVError(f"two tasks are named {dup[0]!r} (names come from the file stems); rename one of the files.")
    if not tasks:
        raise FVError("no task to run: the relation CSV has no q with enough rows for the trials rule.")
    result = []
    for name, raw in tasks:
        folder = ensure_dir(out / name)
        path = folder / TRIALS_FILE
        if isinstance(raw, bytes):
            if not path.is_file() or path.read_bytes() != raw:
                write_bytes(path, raw)
        elif not path.is_file() or read_json(path) != raw:
            save_trials(path, raw)
        result.append(Task(name, folder))
    return result


def task_identity(lm: Any, trials_sha256: str, n_trials: int, mode: str) -> dict:
    """What a task's effects depend on: the model's weights and loading, its own trials, and the mode."""
    return {"model_config_sha256_16": lm.config_hash, "model_name": lm.name, "dtype": str(lm.dtype).replace("torch.", ""),
            "device_type": str(lm.device).split(":")[0], "trials_sha256": trials_sha256, "n_trials": n_trials, "mode": mode}


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
    from fv.runtime.vectors import top_heads

    n = aie.numel()
    if not 1 <= n_top <= n:
        raise FVError(f"--n-top-heads {n_top}: this model has {n} heads (layers x heads); choose 1..{n}.")
    return top_heads(aie.unsqueeze(0), n_top)


# ---- per-task stages (need the model) ----------------------------------------------------------------------
@dataclass
class Prepared:
    trials: Any
    subset: list
    prepared: list
    dummy: list


def _prepare(lm: Any, task: Task, max_trials: int | None) -> Prepared:
    from fv.runtime.prepared import prepare_trials
    from fv.runtime.prompts import dummy_labels, has_bos_text
    from fv.runtime.trials import load_trials

    ft = load_trials(task.trials_path)
    subset = ft.subset(max_trials)
    dummy = dummy_labels(len(subset[0].prompt_data_clean["examples"]), lm.tokenizer, lm.prepend_bos, ft.meta.get("prefixes"),
                         ft.meta.get("separators"), bos_text=has_bos_text(subset[0].prompt_data_clean))
    return Prepared(ft, subset, prepare_trials(lm.tokenizer, subset, dummy, lm.prepend_bos, lm.info.device), dummy)


def clean_top1(model: Any, prepared: Sequence[Any]) -> list[int]:
    """Per trial, the top-1 token id of the last position of its clean ICL prompt."""
    return [int(model(**pt.clean.inputs).logits[:, -1, :][0].argmax()) for pt in prepared]


def run_task_effects(lm: Any, cfg: UniversalConfig, task: Task, quiet: bool = True,
                     log: Callable[[str], None] = lambda _s: None) -> str:
    """Mean activations, indirect effects and ICL accuracy of one task; ``reused`` or ``computed``."""
    from fv.meta import run_meta
    from fv.progress import stage_bar
    from fv.runtime.activations import mean_head_activations
    from fv.runtime.effects import indirect_effects, pad_token_id

    p = _prepare(lm, task, cfg.max_trials)
    ident = task_identity(lm, p.trials.sha256, len(p.subset), cfg.mode)
    key = inputs_key("effects", ident)
    files = [task.folder / f for f in EFFECT_FILES]
    if outputs_fresh(task.folder / "effects_meta.json", key, files):
        log(f"{task.name}: effects reused (same model, trials and mode)")
        return "reused"
    with torch.no_grad():
        with stage_bar(f"{task.name}: mean activations", len(p.subset), quiet) as tick:
            mean = mean_head_activations(lm.model, lm.info, [pt.clean for pt in p.prepared], len(p.dummy), mode=cfg.mode,
                                         progress=tick)
        with stage_bar(f"{task.name}: indirect effect", len(p.subset), quiet) as tick:
            ie = indirect_effects(lm.model, lm.info, [pt.corrupted for pt in p.prepared], mean, pad_token_id(lm.tokenizer),
                                  mode=cfg.mode, progress=tick)
        top1 = clean_top1(lm.model, p.prepared)
    from fv.runtime.finite import require_finite

    trials = {"trial": [f"({t.trial_id}, {t.trial_idx})" for t in p.subset]}
    require_finite(f"{task.name}: mean activations", mean, ["layer", "head", "slot", "head_dim"],
                   {"slot": [f"{i} ({l})" for i, l in p.dummy]})
    require_finite(f"{task.name}: indirect effect", ie, ["trial", "layer", "head"], trials)
    targets = [pt.clean.target_id for pt in p.prepared]
    save_tensors(task.folder / "mean_activations.pt", mean)
    save_tensors(task.folder / "indirect_effect.pt", ie)
    write_json(task.folder / "icl.json", {
        "task": task.name, "trial_keys": [[t.trial_id, t.trial_idx] for t in p.subset], "top1_ids": top1, "target_ids": targets,
        "icl_accuracy": icl_accuracy(top1, targets), "majority_baseline": majority_baseline(targets)})
    write_json(task.folder / "effects_meta.json", run_meta(lm, p.trials, {"mode": cfg.mode, "max_trials": cfg.max_trials},
                                                          inputs_key=key, identity=ident, task=task.name,
                                                          dims={"mean_activations": ["layer", "head", "slot", "head_dim"],
                                                                "indirect_effect": ["trial", "layer", "head"]}))
    log(f"{task.name}: effects computed")
    return "computed"


def read_heads(out: Path) -> list[tuple[int, int, float]]:
    """The universal heads from ``universal_top_heads.json`` under ``out``, as ``(layer, head, score)`` tuples.

    Raises FVError when the file is missing or not valid JSON.
    """
    return [(int(l), int(h), float(s)) for l, h, s in read_json(Path(out) / "universal_top_heads.json")]


def run_task_vector(lm: Any, cfg: UniversalConfig, task: Task, heads: Sequence[tuple[int, int, float]], quiet: bool = True,
                    log: Callable[[str], None] = lambda _s: None) -> str:
    """The task's universal FV and its evaluation at every edit layer; ``reused`` or ``computed``."""
    from fv.meta import run_meta
    from fv.progress import stage_bar
    from fv.runtime.evaluation import evaluate_layers, summarize
    from fv.runtime.pipeline import parse_layers
    from fv.runtime.vectors import function_vector

    layers = parse_layers(cfg.edit_layers, lm.info.n_layers, min(9, lm.info.n_layers - 1))
    effects_key = json.loads((task.folder / "effects_meta.json").read_text())["inputs_key"]
    key = inputs_key("vector", effects_key, [list(h) for h in heads], layers)
    files = [task.folder / "fv_universal.pt", task.folder / "universal_eval.json"]
    if outputs_fresh(task.folder / "fv_universal_meta.json", key, files):
        log(f"{task.name}: universal FV and evaluation reused")
        return "reused"
    p = _prepare(lm, task, cfg.max_trials)
    mean = load_tensor_file(task.folder / "mean_activations.pt")
    with torch.no_grad():
        fvr = function_vector(mean, list(heads), lm.info)
        with stage_bar(f"{task.name}: evaluation", len(layers), quiet, unit="layer") as tick:
            by_layer = evaluate_layers(lm.model, lm.tokenizer, lm.info, p.prepared, fvr.vector, layers, progress=tick)
    from fv.runtime.finite import require_finite, require_finite_rows

    require_finite(f"{task.name}: universal function vector", fvr.by_layer, ["layer", "d_model"])
    require_finite(f"{task.name}: universal function vector", fvr.vector.reshape(-1), ["element"])
    for L, rows in by_layer.items():
        require_finite_rows(f"{task.name}: evaluation", rows, L)
    save_tensors(task.folder / "fv_universal.pt", fvr.vector.reshape(-1).to("cpu"))
    write_json(task.folder / "universal_eval.json", {
        "task": task.name, "edit_layers": layers,
        "by_layer": {str(L): summarize(rows) for L, rows in by_layer.items()},
        "trials": {str(L): rows for L, rows in by_layer.items()}})
    write_json(task.folder / "fv_universal_meta.json", run_meta(lm, p.trials, {"n_top_heads": len(heads), "edit_layers": layers},
                                                               inputs_key=key, task=task.name, d_model=lm.info.d_model,
                                                               top_heads=[list(h) for h in heads],
                                                               norm=float(fvr.vector.float().norm())))
    log(f"{task.name}: universal FV and evaluation computed")
    return "computed"


# ---- the aggregation step (no model needed) ----------------------------------------------------------------
def aggregate(cfg: UniversalConfig, tasks: Sequence[Task], log: Callable[[str], None] = lambda _s: None) -> dict:
    """``aie_by_task.pt``, ``tasks.json``, ``aie.pt`` and ``universal_top_heads.json`` from the tasks' effects."""
    out = Path(cfg.out)
    rows, effects = [], []
    for t in tasks:
        icl = read_json(t.folder / "icl.json")
        rows.append({"name": t.name, "trials_sha256": sha256_file(t.trials_path), "n_trials": len(icl["target_ids"]),
                     "icl_accuracy": icl["icl_accuracy"], "majority_baseline": icl["majority_baseline"]})
        effects.append(load_tensor_file(t.folder / "indirect_effect.pt"))
    shapes = {tuple(e.shape[1:]) for e in effects}
    if len(shapes) != 1:
        raise FVError(f"the tasks' indirect effects have different (layers, heads) shapes {sorted(shapes)}: they come from "
                      "different models; remove the stale task folders from --out.")
    decided = filter_tasks(rows, cfg.task_filter)
    by_task = aie_by_task(effects)
    aie = average_indirect_effect(by_task, [r["kept"] for r in decided])
    n_top = cfg.n_top_heads
    heads = universal_heads(aie, n_top)
    save_tensors(out / "aie_by_task.pt", by_task)
    save_tensors(out / "aie.pt", aie)
    write_json(out / "tasks.json", {"task_filter": cfg.task_filter, "tasks": decided})
    write_json(out / "universal_top_heads.json", [[l, h, s] for l, h, s in heads])
    kept = [r["name"] for r in decided if r["kept"]]
    log(f"AIE over {len(kept)} of {len(decided)} tasks ({', '.join(kept)}); top {n_top} heads: "
        + ", ".join(f"L{l}H{h}" for l, h, _ in heads[:5]) + (" ..." if n_top > 5 else ""))
    return {"tasks": decided, "heads": heads}


# ---- driving it all ----------------------------------------------------------------------------------------
def run_phase(lm: Any, cfg: UniversalConfig, tasks: Sequence[Task], phase: str, quiet: bool = True,
              log: Callable[[str], None] = lambda _s: None) -> dict[str, str]:
    """``effects`` or ``vector`` for each task, on one loaded model."""
    from fv.progress import stage_bar

    heads = read_heads(Path(cfg.out)) if phase == "vector" else None
    done = {}
    with cpu_threads(cfg.cpu_threads, lm.device), stage_bar(f"tasks ({phase})", len(tasks), quiet, unit="task") as tick:
        for t in tasks:
            done[t.name] = (run_task_effects(lm, cfg, t, quiet, log) if phase == "effects"
                            else run_task_vector(lm, cfg, t, heads, quiet, log))
            tick(1)
    return done


def run_universal(cfg: UniversalConfig, quiet: bool = True, log: Callable[[str], None] = lambda _s: None,
                  cluster: Any = None, lm: Any = None) -> dict:
    """Every file of ``fv universal`` under ``cfg.out``; returns the aggregation (tasks with kept/reason, heads).
    ``cluster`` (a ``ClusterConfig``) runs each task as one element of a job array, per phase."""
    if cluster is None:
        from fv.model.loading import load_model

        lm = lm or load_model(cfg.model, cfg.device, cfg.dtype)
        tasks = prepare_tasks(cfg, lm.tokenizer, lm.name, lm.prepend_bos)
        run_phase(lm, cfg, tasks, "effects", quiet, log)
        result = aggregate(cfg, tasks, log)
        run_phase(lm, cfg, tasks, "vector", quiet, log)
    else:
        from fv.runtime.relation_cluster import light_model

        tok, name, bos, _ident = light_model(cfg.model, cfg.dtype)
        tasks = prepare_tasks(cfg, tok, name, bos)
        _array(cfg, cluster, tasks, "effects", quiet, log)
        result = aggregate(cfg, tasks, log)
        _array(cfg, cluster, tasks, "vector", quiet, log)
    write_json(Path(cfg.out) / "universal_meta.json", {"config": asdict(cfg), "tasks": [t.name for t in tasks]})
    return {**result, "task_names": [t.name for t in tasks]}


class UniversalTask:
    """One array element: load the model once, run one phase for its tasks (submitit pickles this by reference)."""

    def __call__(self, cfg_dict: dict, phase: str, names: list[str]) -> dict[str, str]:
        from fv.model.loading import load_model

        cfg = UniversalConfig(**cfg_dict)
        lm = load_model(cfg.model, cfg.device, cfg.dtype)
        tasks = [Task(n, Path(cfg.out) / n) for n in names]
        return run_phase(lm, cfg, tasks, phase, log=lambda line: print(line, flush=True))


def _array(cfg: UniversalConfig, cc: Any, tasks: Sequence[Task], phase: str, quiet: bool, log: Callable[[str], None]) -> None:
    from fv.progress import stage_bar
    from fv.runtime.cluster import array_id, job_record, make_executor, save_submission, wait_jobs

    per = max(1, int(getattr(cc, "qs_per_task", 1) or 1))
    groups = [[t.name for t in tasks[i : i + per]] for i in range(0, len(tasks), per)]
    folder = Path(cfg.out) / "_jobs" / phase
    ex = make_executor(cc, folder / "%j", name=f"fv-universal-{phase}")
    jobs = ex.map_array(UniversalTask(), [asdict(cfg)] * len(groups), [phase] * len(groups), groups)
    records = [{**job_record(j), "tasks": g} for j, g in zip(jobs, groups)]
    save_submission(folder / "submission.json", cc.executor, cc, records, {"phase": phase, "array_id": array_id(jobs)})
    log(f"{phase}: submitted {len(tasks)} tasks as {len(groups)} {cc.executor} array tasks, job {array_id(jobs)}; logs in {folder}")
    failed: list[str] = []
    with stage_bar(f"tasks ({phase})", len(tasks), quiet, unit="task") as tick:
        def on_done(i: int, result: Any, error: BaseException | None) -> None:
            if error is not None:
                failed.append(f"task {records[i]['job_id']} ({', '.join(records[i]['tasks'])}): "
                              f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}; log {records[i]['stderr']}")
            else:
                for n, status in result.items():
                    log(f"{n}: {phase} {status} (task {records[i]['job_id']})")
            tick(len(records[i]["tasks"]))

        wait_jobs(jobs, on_done, poll_s=cc.poll_s)
    if failed:
        raise FVError(f"{len(failed)} array tasks of the {phase} phase ended without a result; rerun the same command to "
                      f"redo only them. First: {failed[0]}")
