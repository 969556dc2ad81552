"""The universal FV (Todd et al., appendix G): one list of heads for a model, from the indirect effects averaged
over tasks, and each task's FV built from its own mean activations and those heads.

Per task (one fixed-trials file, or one q of a relation CSV):

- the mean head activations over its clean prompts and the indirect effect of every head over its
  shuffled-label prompts, ``(trials, layers, heads)``, exactly as ``fv runtime run`` computes them (``--mode``);
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

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from fv.errors import FVError, UsageError
from fv.io import ensure_dir, load_tensor_file, read_json, save_tensors, sha256_file, write_bytes, write_json
from fv.pipelines.resume import inputs_key, outputs_fresh
from fv.pipelines.threads import cpu_threads
from fv.runtime.universal import (
    FILTERS,
    aie_by_task,
    average_indirect_effect,
    filter_tasks,
    icl_accuracy,
    majority_baseline,
    universal_heads,
)

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
    n_trials: int = 10  # --datasets: trials per task, shots, seed (as `fv trials make`)
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


# ---- per-task stages (need the model) ----------------------------------------------------------------------
@dataclass
class Prepared:
    trials: Any
    subset: list
    prepared: list
    dummy: list


def _prepare(lm: Any, task: Task, max_trials: int | None) -> Prepared:
    from fv.runtime.prepared import prepare_trials
    from fv.runtime.prompts import has_bos_text
    from fv.runtime.slots import dummy_labels
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
    from fv.pipelines.run import parse_layers
    from fv.progress import stage_bar
    from fv.runtime.evaluation import evaluate_layers, summarize
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
        from fv.model.loading import light_model

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
    from fv.pipelines.array import groups_of, run_array

    failed: list[str] = []

    def result(t: Any, res: dict[str, str]) -> None:
        for n, status in res.items():
            log(f"{n}: {phase} {status} (task {t.job_id})")

    def lost(t: Any, why: str) -> None:
        failed.append(f"task {t.job_id} ({', '.join(t.items)}): {why}; log {t.log}")

    run_array(cc, Path(cfg.out) / "_jobs" / phase, f"fv-universal-{phase}", UniversalTask(), [asdict(cfg), phase],
              groups_of([t.name for t in tasks], getattr(cc, "qs_per_task", 1)), on_result=result, on_lost=lost,
              bar=(f"tasks ({phase})", len(tasks), 0), unit="task", record={"phase": phase}, item_key="tasks", quiet=quiet,
              log=lambda line: log(f"{phase}: {line}"))
    if failed:
        raise FVError(f"{len(failed)} array tasks of the {phase} phase ended without a result; rerun the same command to "
                      f"redo only them. First: {failed[0]}")
