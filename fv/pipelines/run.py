"""The fv runtime end to end (M4): mean activations, indirect effects, top heads, the FV by layer and in the
residual stream, and its evaluation at one or more edit layers, every artifact written with its meta.

In fast mode the evaluation of the shuffled prompts reuses the prefix key/value cache that the indirect
effects computed for them (``fv.runtime.evaluation.BaselineStore``), so each prompt's prefix runs once.

``resume`` skips a stage whose outputs exist and whose meta records the same inputs (model config, trials
sha256, parameters, mode); anything else is recomputed. Artifacts are written atomically, so an interrupted
run never leaves a file that a resumed one would trust.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Sequence

import torch

from fv.io import ensure_dir, load_tensor_file, read_json, save_tensors, write_json, write_text
from fv.meta import run_meta
from fv.model.loading import LoadedModel
from fv.pipelines.resume import inputs_key, outputs_fresh
from fv.progress import stage_bar
from fv.runtime.activations import mean_head_activations
from fv.runtime.effects import indirect_effects, pad_token_id
from fv.runtime.evaluation import BaselineStore, eval_rows_per_pass, evaluate_layers, summarize
from fv.runtime.finite import require_finite, require_finite_rows
from fv.runtime.prepared import PROMPT_SETS, PreparedTrial, prepare_trials
from fv.runtime.prompts import has_bos_text
from fv.runtime.slots import dummy_labels
from fv.runtime.top_heads import top_heads
from fv.runtime.trials import FixedTrials
from fv.runtime.vectors import function_vector

RUNTIME_FILES = (
    "mean_activations.pt", "mean_activations_meta.json", "top_heads.json", "fv_by_layer.pt", "fv_global_resid.pt",
    "fv_global_resid_meta.json", "eval_summary.json", "eval_trials.jsonl", "eval_meta.json",
)


@dataclass
class RunConfig:
    n_top_heads: int = 10
    edit_layers: Sequence[int] = (9,)
    max_trials: int | None = None
    mode: str = "exact"
    resume: bool = False
    per_layer_folders: bool = False  # relation runs: layer_<L>/step6_results.json instead of step6_results_L<L>.json
    extra_meta: dict = field(default_factory=dict)

    def step6_path(self, out: Path, layer: int) -> Path:
        return out / f"layer_{layer}" / "step6_results.json" if self.per_layer_folders else out / f"step6_results_L{layer}.json"


def parse_layers(spec: str | None, n_layers: int, default: int) -> list[int]:
    """``9``, ``0-31``, ``3,5,9`` or ``all``."""
    from fv.errors import UsageError

    if spec is None:
        return [default]
    if spec == "all":
        return list(range(n_layers))
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                out += list(range(a, b + 1))
            else:
                out.append(int(part))
        except ValueError as exc:
            raise UsageError(f"cannot read edit layers {spec!r}: use N, A-B, a comma list, or all.") from exc
    bad = [x for x in out if not 0 <= x < n_layers]
    if bad:
        raise UsageError(f"edit layers {bad} are outside this model's {n_layers} layers (0..{n_layers - 1}).")
    return out


@dataclass
class RunResult:
    """What a run leaves in memory besides its files: the eval summary, the prepared trials and eval rows of the
    primary edit layer, and which stages it reused from a previous run."""

    summary: dict
    prepared: list[PreparedTrial]
    dummy: list[tuple[int, str]]
    rows: list[dict]
    reused: list[str]
    computed: list[str]
    meta: dict  # the run's provenance, as every artifact's meta records it


STAGE_NAMES = ("preparation", "mean activations", "indirect effects", "top heads and FV", "evaluation", "writing artifacts")


def run_runtime(lm: LoadedModel, trials: FixedTrials, out_dir: str | Path, cfg: RunConfig, quiet: bool = True,
                log: Callable[[str], None] = lambda _line: None,
                stage: Callable[[str], ContextManager] | None = None) -> RunResult:
    """Write every runtime artifact (docs/artifacts.md) into ``out_dir``; returns the eval summary and more.

    ``stage(name)``, when given, wraps each stage's work, one of ``STAGE_NAMES`` (``writing artifacts`` once per
    write): the benchmark's clock and memory window (benchmarks/bench_pipeline.py).
    """
    stage = stage or (lambda _name: contextlib.nullcontext())
    store = BaselineStore() if cfg.mode == "fast" else None
    try:
        return _run(lm, trials, out_dir, cfg, quiet, log, stage, store)
    finally:
        if store is not None:
            store.close()


def _run(lm: LoadedModel, trials: FixedTrials, out_dir: str | Path, cfg: RunConfig, quiet: bool,
         log: Callable[[str], None], stage: Callable[[str], ContextManager], store: BaselineStore | None) -> RunResult:
    out = ensure_dir(out_dir)
    subset = trials.subset(cfg.max_trials)
    for layer in cfg.edit_layers:
        lm.info.check_edit_layer(layer)
    meta_p, sep = trials.meta.get("prefixes"), trials.meta.get("separators")
    base_key = [lm.config_hash, str(lm.dtype), lm.device, trials.sha256, len(subset), cfg.mode]
    params = {"n_top_heads": cfg.n_top_heads, "edit_layers": list(cfg.edit_layers), "max_trials": cfg.max_trials, "mode": cfg.mode}
    meta = lambda **kw: run_meta(lm, trials, params, **cfg.extra_meta, **kw)  # noqa: E731
    with stage("preparation"):
        dummy = dummy_labels(len(subset[0].prompt_data_clean["examples"]), lm.tokenizer, lm.prepend_bos, meta_p, sep,
                             bos_text=has_bos_text(subset[0].prompt_data_clean))
        prepared = prepare_trials(lm.tokenizer, subset, dummy, lm.prepend_bos, lm.info.device)
    reused: list[str] = []
    computed: list[str] = []

    def tensor_stage(name: str, label: str, key: str, compute, stage_name: str = "", labels: dict | None = None,
                     **meta_extra) -> torch.Tensor:
        """Load ``<name>.pt`` when resuming and its meta records ``key``; else compute, check that it is finite
        (a NaN or an infinity stops the run, naming where, and nothing of the stage is written), save, write the meta."""
        f = out / f"{name}.pt"
        if cfg.resume and outputs_fresh(out / f"{name}_meta.json", key, [f]):
            reused.append(name)
            log(f"{label}: reused {f.name} (inputs unchanged)")
            with stage(stage_name or label):
                return load_tensor_file(f)
        with stage(stage_name or label), stage_bar(label, len(subset), quiet) as tick:
            value = compute(tick)
        require_finite(label, value, meta_extra.get("dims", ()), labels)
        with stage("writing artifacts"):
            save_tensors(f, value)
            write_json(out / f"{name}_meta.json", meta(inputs_key=key, shape=list(value.shape), **meta_extra))
        computed.append(name)
        return value

    # fast mode's prompts per full-width pass, from the free memory (capped at 16, where batching stops paying)
    width = max(int(pt.clean.inputs["input_ids"].shape[1]) for pt in prepared)
    per_pass = max(1, min(16, eval_rows_per_pass(lm.model, lm.info, width, lm.info.device, logit_positions=1))) if cfg.mode == "fast" else 1
    k_mean = inputs_key("mean", base_key)
    mean = tensor_stage(
        "mean_activations", "mean activations", k_mean,
        lambda tick: mean_head_activations(lm.model, lm.info, [pt.clean for pt in prepared], len(dummy), mode=cfg.mode,
                                           progress=tick, batch=per_pass),
        labels={"slot": [f"{p} ({l})" for p, l in dummy]},
        dims=["layer", "head", "slot", "head_dim"], dummy_labels=[[p, l] for p, l in dummy])
    k_ie = inputs_key("ie", base_key, k_mean)
    ie = tensor_stage(
        "indirect_effect", "indirect effect", k_ie,
        lambda tick: indirect_effects(lm.model, lm.info, [pt.corrupted for pt in prepared], mean, pad_token_id(lm.tokenizer),
                                      mode=cfg.mode, progress=tick, keep=store,
                                      trials_per_pass=per_pass),
        stage_name="indirect effects", labels={"trial": [f"({t.trial_id}, {t.trial_idx})" for t in subset]},
        dims=["trial", "layer", "head"], trial_keys=[[t.trial_id, t.trial_idx] for t in subset])
    # top heads and the FV
    k_fv = inputs_key("fv", k_ie, cfg.n_top_heads)
    files_fv = [out / "top_heads.json", out / "fv_by_layer.pt", out / "fv_global_resid.pt"]
    if cfg.resume and outputs_fresh(out / "fv_global_resid_meta.json", k_fv, files_fv):
        with stage("top heads and FV"):
            fv_vec = load_tensor_file(out / "fv_global_resid.pt").to(lm.info.device, lm.dtype)
        reused.append("fv")
        log("top heads and FV: reused (inputs unchanged)")
    else:
        with stage("top heads and FV"):
            heads = top_heads(ie, cfg.n_top_heads)
            fvr = function_vector(mean, heads, lm.info)
            fv_vec = fvr.vector
            require_finite("function vector", fvr.by_layer, ["layer", "d_model"])
            require_finite("function vector", fvr.vector.reshape(-1), ["element"])
        with stage("writing artifacts"):
            write_json(out / "top_heads.json", [[l, h, s] for l, h, s in heads])
            save_tensors(out / "fv_by_layer.pt", fvr.by_layer)
            save_tensors(out / "fv_global_resid.pt", fvr.vector.reshape(-1).to("cpu"))
            write_json(out / "fv_global_resid_meta.json", meta(inputs_key=k_fv, d_model=lm.info.d_model,
                                                               top_heads=[[l, h, s] for l, h, s in heads],
                                                               norm=float(fvr.vector.float().norm())))
        computed.append("fv")
    # evaluation per edit layer
    todo = [L for L in cfg.edit_layers if not (cfg.resume and outputs_fresh(cfg.step6_path(out, L), inputs_key("eval", k_fv, L), [cfg.step6_path(out, L)]))]
    if len(todo) < len(cfg.edit_layers):
        reused.append("evaluation:" + ",".join(str(L) for L in cfg.edit_layers if L not in todo))
        log(f"evaluation: reused edit layers {[L for L in cfg.edit_layers if L not in todo]}")
    by_layer: dict[int, list[dict]] = {}
    if todo:
        with stage("evaluation"), stage_bar("evaluation", len(todo), quiet, unit="layer") as tick:
            by_layer = evaluate_layers(lm.model, lm.tokenizer, lm.info, prepared, fv_vec, todo, progress=tick,
                                       mode=cfg.mode, baseline=store, pad_id=pad_token_id(lm.tokenizer))
        for L, layer_rows in by_layer.items():  # every layer checked before any is written
            require_finite_rows("evaluation", layer_rows, L)
        computed.append("evaluation:" + ",".join(str(L) for L in todo))
    if store is not None:
        store.close()  # the prefix caches are spent
    with stage("writing artifacts"):
        for L, rows in by_layer.items():
            write_json(cfg.step6_path(out, L), {"inputs_key": inputs_key("eval", k_fv, L), "edit_layer": L,
                                                "summary": summarize(rows), "trials": rows})
        summaries = {L: read_json(cfg.step6_path(out, L))["summary"] for L in cfg.edit_layers}
        primary = cfg.edit_layers[0]
        rows = by_layer.get(primary) or read_json(cfg.step6_path(out, primary))["trials"]
        summary = {**summaries[primary], "edit_layer": primary}
        if len(cfg.edit_layers) > 1:
            summary["best_layer_zero_shot_delta_logprob"] = best_layer(summaries)
        write_json(out / "eval_summary.json", summary)
        write_text(out / "eval_trials.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        write_json(out / "eval_meta.json", meta(edit_layer=primary, edit_layers=list(cfg.edit_layers), n_rows=len(rows),
                                                prompt_sets=list(PROMPT_SETS)))
    return RunResult(summary, prepared, dummy, rows, reused, computed, meta())


def best_layer(summaries: dict[int, dict]) -> int:
    """The edit layer whose FV raises the target's zero-shot log-probability most (ties: the earliest)."""
    return max(summaries, key=lambda L: (summaries[L]["by_prompt_set"]["zero_shot"]["mean_delta_logprob"], -L))
