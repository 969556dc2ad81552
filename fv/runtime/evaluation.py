"""Evaluating an FV: inject it at the last token of the zero-shot and the shuffled-label prompt of each trial
and record, with and without it, the target's first-token logit, log-probability, probability and the top-1
prediction. The clean run does not depend on the edit layer, so it is computed once per prompt.

``exact`` mode runs every prompt alone, twice per edit layer, as the reference does. ``fast`` mode reaches the
same scores (within float rounding) at a fraction of the cost:

* the shuffled prompts reuse the prefix key/value cache that fast indirect effects computed for them
  (``BaselineStore``, kept on disk so memory stays flat in the trials): only their last token runs, once
  clean and once per edit layer with the FV added;
* the zero-shot prompts run in right-padded batches (causal attention never looks at the pads), their clean
  rows and the edited rows of every edit layer in one pass (every position's logits: a tensor ``logits_to_keep``
  is read differently across transformers releases);
* rows per pass are sized from the free memory, and hold at most ``LOGITS_BUDGET`` of logits
  (``fv.runtime.memory``, shared with the indirect effects).
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from fv import compat
from fv.model.kv_cache import with_cache
from fv.model.tree import ModelInfo
from fv.runtime.hooks import add_to_output
from fv.runtime.injection import TargetScore
from fv.runtime.prepared import PROMPT_SETS, PreparedPrompt, PreparedTrial, equal_passes


@dataclass
class _Scored:
    trial: PreparedTrial
    prompt_set: str
    prompt: PreparedPrompt
    base: TargetScore


def _row(tokenizer: Any, p: _Scored, with_: TargetScore) -> dict:
    b, tid, tr = p.base, p.prompt.target_id, p.trial.trial
    return {
        "trial_id": tr.trial_id, "trial_idx": tr.trial_idx, "prompt_set": p.prompt_set, "prompt": p.prompt.text,
        "answer": tr.target_str, "target_id": tid, "target_token": tokenizer.decode([tid]),
        "pred_id_base": b.pred_id, "pred_id_with": with_.pred_id,
        "accuracy_base": int(b.pred_id == tid), "accuracy_with": int(with_.pred_id == tid),
        "logit_base": b.logit, "logit_with": with_.logit, "logprob_base": b.logprob, "logprob_with": with_.logprob,
        "p_base": b.prob, "p_with": with_.prob, "delta_logit": with_.logit - b.logit,
        "delta_logprob": with_.logprob - b.logprob, "delta_p": with_.prob - b.prob,
    }


def evaluate_layers(model: Any, tokenizer: Any, info: ModelInfo, trials: Sequence[PreparedTrial], vector: torch.Tensor,
                    layers: Sequence[int], progress: Callable[[int], None] | None = None, mode: str = "exact",
                    baseline: "BaselineStore | None" = None, pad_id: int = 0, rows_per_pass: int | None = None
                    ) -> dict[int, list[dict]]:
    """Per edit layer, one row per (trial, prompt set), in trial order.

    ``mode="fast"`` batches the zero-shot prompts and takes the shuffled prompts' prefix cache from ``baseline``
    (filled by fast indirect effects; prompts it lacks run in batches too); ``rows_per_pass`` bounds a pass's
    rows (default: sized from the free memory). ``pad_id`` pads the batches (never attended to).
    """
    for layer in layers:
        info.check_edit_layer(layer)
    if mode == "fast":
        return _evaluate_fast(model, tokenizer, info, trials, vector, layers, progress, baseline, pad_id, rows_per_pass)
    scored = []
    for pt in trials:
        for name in PROMPT_SETS:
            p = pt.prompt_set(name)
            scored.append(_Scored(pt, name, p, TargetScore.of(model(**p.inputs).logits[:, -1, :], p.target_id)))
    out: dict[int, list[dict]] = {}
    for layer in layers:
        rows = []
        for s in scored:
            with add_to_output(info.layers[layer], vector.reshape(1, info.d_model), -1):
                with_ = TargetScore.of(model(**s.prompt.inputs).logits[:, -1, :], s.prompt.target_id)
            rows.append(_row(tokenizer, s, with_))
        out[layer] = rows
        if progress:
            progress(1)
    return out


class BaselineStore:
    """The prefix key/value caches of the shuffled (corrupted) prompts, as fast indirect effects computed them.

    Called by ``indirect_effects(..., keep=store)`` once per pass of trials; each pass's cache goes to a file in
    a temporary folder (moved to the CPU first), so memory does not grow with the trials: the evaluation loads
    one pass's cache at a time. ``close`` removes the folder (also on garbage collection).
    """

    def __init__(self, root: str | Path | None = None):
        self._dir = tempfile.TemporaryDirectory(prefix="fv_baseline_", dir=root)
        self.groups: list[tuple[Path, list[int]]] = []  # (file, id() of each prompt, in row order)

    def __call__(self, prompts: Sequence[PreparedPrompt], prefix_kv: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 lengths: Sequence[int]) -> None:
        f = Path(self._dir.name) / f"pass_{len(self.groups)}.pt"
        torch.save({"kv": [(k.detach().to("cpu"), v.detach().to("cpu")) for k, v in prefix_kv], "lengths": list(lengths)}, f)
        self.groups.append((f, [id(p) for p in prompts]))

    def close(self) -> None:
        self._dir.cleanup()
        self.groups = []


@contextlib.contextmanager
def _add_at(module: Any, rows: torch.Tensor, positions: torch.Tensor, vector: torch.Tensor) -> Iterator[None]:
    """Add ``vector`` (d_model,) to ``module``'s hidden-state output at (``rows[i]``, ``positions[i]``), in place."""

    def hook(_m, _inputs, output):
        hidden = compat.layer_hidden(output)
        hidden.index_put_((rows.to(hidden.device), positions.to(hidden.device)),
                          vector.to(hidden.device, hidden.dtype).expand(len(rows), -1), accumulate=True)
        return output

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def eval_rows_per_pass(model: Any, info: ModelInfo, tokens: int, device: Any, share: float = 0.25, most: int = 512,
                       logit_positions: int | None = None) -> int:
    """Rows of ``tokens`` tokens one evaluation pass may hold: a share of the free memory over one row's need
    (hidden states, MLP activations and attention scores per token, and the float32 logits of every position),
    and never more than ``LOGITS_BUDGET`` of logits (so the peak does not grow with the trials).
    ``logit_positions``: positions per row whose logits the pass computes (default: all ``tokens``; 1 for passes
    that unembed one position, as mean activations and the indirect effect's prefix pass do)."""
    from fv.runtime.memory import free_bytes, logits_rows, model_sizes

    elem, vocab, inter = model_sizes(model, info)
    positions = tokens if logit_positions is None else logit_positions
    per_row = tokens * (12 * info.d_model * elem + 3 * inter * elem + 2 * info.n_heads * tokens * 4) + 3 * positions * vocab * 4
    return int(max(1, min(most, logits_rows(vocab, positions), share * free_bytes(device) // max(per_row, 1))))


def _batched_scores(model: Any, info: ModelInfo, prompts: Sequence[PreparedPrompt], vector: torch.Tensor,
                    layers: Sequence[int], pad_id: int, rows_per_pass: int | None) -> list[list[TargetScore]]:
    """Per prompt, [clean score, score with the FV at each of ``layers``], from right-padded passes holding the
    clean rows and the edited rows together, with logits at the last real positions only."""
    if not prompts:
        return []
    dev = prompts[0].inputs["input_ids"].device
    per = 1 + len(layers)
    width = max(int(p.inputs["input_ids"].shape[1]) for p in prompts)
    rows = rows_per_pass or eval_rows_per_pass(model, info, width, dev)
    out: list[list[TargetScore]] = []
    for part in equal_passes(len(prompts), max(1, rows // per)):  # 40 prompts at 12 a pass run as 4 of 10
        group = [prompts[i] for i in part]
        n = len(group)
        lengths = [int(p.inputs["input_ids"].shape[1]) for p in group]
        w = max(lengths)
        ids = torch.full((n * per, w), pad_id, dtype=torch.long, device=dev)
        mask = torch.zeros_like(ids)
        for b in range(per):
            for k, (p, m) in enumerate(zip(group, lengths)):
                ids[b * n + k, :m] = p.inputs["input_ids"][0]
                mask[b * n + k, :m] = 1
        last = torch.tensor(lengths, device=dev).repeat(per) - 1
        with contextlib.ExitStack() as stack:
            for b, layer in enumerate(layers, start=1):
                rows_b = torch.arange(b * n, (b + 1) * n, device=dev)
                stack.enter_context(_add_at(info.layers[layer], rows_b, last[b * n : (b + 1) * n], vector.reshape(-1)))
            # every position's logits: a tensor logits_to_keep is not read the same way by every transformers release
            logits = model(input_ids=ids, attention_mask=mask).logits
            at = last
        picked = logits[torch.arange(n * per, device=dev), at]
        del logits  # freed before the next pass allocates its own: the peak is one pass's logits, whatever the trials
        for k, p in enumerate(group):
            out.append([TargetScore.of(picked[b * n + k], p.target_id) for b in range(per)])
    return out


def _cached_scores(model: Any, info: ModelInfo, file: Path, prompts: Sequence[PreparedPrompt], vector: torch.Tensor,
                   layers: Sequence[int]) -> list[list[TargetScore]]:
    """Per prompt, [clean score, score with the FV at each of ``layers``], running only the last token over the
    prefix cache a ``BaselineStore`` kept: the prefix does not depend on an FV added at the last token."""
    dev = prompts[0].inputs["input_ids"].device
    data = torch.load(file, map_location=dev, weights_only=True)
    kv, lengths = data["kv"], data["lengths"]
    n, width = len(prompts), int(kv[0][0].shape[2])
    mask = torch.zeros((n, width + 1), dtype=torch.long, device=dev)
    for k, m in enumerate(lengths):
        mask[k, :m] = 1
    mask[:, width] = 1
    pos = torch.tensor(lengths, device=dev).view(n, 1)
    last = torch.stack([p.inputs["input_ids"][0, -1] for p in prompts]).view(n, 1)
    cfg = getattr(model.config, "get_text_config", lambda: model.config)()

    def once(layer: int | None) -> torch.Tensor:
        cache = compat.new_dynamic_cache(cfg)
        for i, (k_, v_) in enumerate(kv):
            cache.update(k_, v_, i)
        ctx = add_to_output(info.layers[layer], vector.reshape(1, info.d_model), -1) if layer is not None else contextlib.nullcontext()
        with ctx:
            return model(input_ids=last, attention_mask=mask, position_ids=pos, **with_cache(model, cache)).logits[:, -1]

    runs = [once(None)] + [once(layer) for layer in layers]
    return [[TargetScore.of(r[k], p.target_id) for r in runs] for k, p in enumerate(prompts)]


def _sliding_window(model: Any) -> int | None:
    """The model's shortest sliding attention window, or None where every layer attends to all positions."""
    cfg = getattr(model.config, "get_text_config", lambda: model.config)()
    window = getattr(cfg, "sliding_window", None) or getattr(cfg, "attention_window", None)
    types = getattr(cfg, "layer_types", None)
    if not window or (types is not None and not any("sliding" in str(t) for t in types)):
        return None
    return int(window) if isinstance(window, int) else int(min(window))


def _evaluate_fast(model: Any, tokenizer: Any, info: ModelInfo, trials: Sequence[PreparedTrial], vector: torch.Tensor,
                   layers: Sequence[int], progress: Callable[[int], None] | None, baseline: BaselineStore | None,
                   pad_id: int, rows_per_pass: int | None) -> dict[int, list[dict]]:
    scores: dict[tuple[int, str], list[TargetScore]] = {}
    zs = _batched_scores(model, info, [pt.zero_shot for pt in trials], vector, layers, pad_id, rows_per_pass)
    for k, sc in enumerate(zs):
        scores[(k, "zero_shot")] = sc
    index = {id(pt.corrupted): k for k, pt in enumerate(trials)}
    window = _sliding_window(model)
    for file, ids in (baseline.groups if baseline is not None else []):
        ks = [index.get(i) for i in ids]
        if any(k is None for k in ks) or any((k, "shuffled") in scores for k in ks):
            continue
        if window is not None and max(int(trials[k].corrupted.inputs["input_ids"].shape[1]) for k in ks) > window:
            continue  # a sliding-window cache would drop keys a full pass attends to: run these prompts in full
        try:
            got = _cached_scores(model, info, file, [trials[k].corrupted for k in ks], vector, layers)
        except (TypeError, ValueError, RuntimeError) as exc:
            warnings.warn(f"fast evaluation could not reuse the indirect effect's cache ({exc}); running the shuffled "
                          "prompts in full", RuntimeWarning, stacklevel=3)
            continue
        for k, sc in zip(ks, got):
            scores[(k, "shuffled")] = sc
    rest = [k for k in range(len(trials)) if (k, "shuffled") not in scores]
    for k, sc in zip(rest, _batched_scores(model, info, [trials[k].corrupted for k in rest], vector, layers, pad_id,
                                           rows_per_pass)):
        scores[(k, "shuffled")] = sc
    out: dict[int, list[dict]] = {}
    for b, layer in enumerate(layers, start=1):
        rows = []
        for k, pt in enumerate(trials):
            for name in PROMPT_SETS:
                sc = scores[(k, name)]
                rows.append(_row(tokenizer, _Scored(pt, name, pt.prompt_set(name), sc[0]), sc[b]))
        out[layer] = rows
        if progress:
            progress(1)
    return out


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return (statistics.fmean(xs), statistics.pstdev(xs)) if xs else (float("nan"), float("nan"))


def summarize(rows: list[dict]) -> dict:
    """The eval summary: ``{"by_prompt_set": {"zero_shot": {...}, "shuffled": {...}}}``, each prompt set's figures
    apart and named (``n``, accuracies, means and population stds of the logit, log-prob and probability of the
    target's first token, with and without the FV). No field pools the two sets: zero-shot and shuffled prompts
    answer different questions, and a reader taking a pooled ``mean_delta_p`` for the zero-shot one would be misled."""

    def block(rs: list[dict]) -> dict:
        s: dict = {"n": len(rs)}
        for name, col in (("acc_base", "accuracy_base"), ("acc_with", "accuracy_with"), ("mean_logit_base", "logit_base"),
                          ("mean_logit_with", "logit_with"), ("mean_delta_logit", "delta_logit"),
                          ("mean_logprob_base", "logprob_base"), ("mean_logprob_with", "logprob_with"),
                          ("mean_delta_logprob", "delta_logprob"), ("mean_p_base", "p_base"), ("mean_p_with", "p_with"),
                          ("mean_delta_p", "delta_p")):
            m, sd = _mean_std([float(r[col]) for r in rs])
            s[name] = m
            s[("std_" + name.removeprefix("mean_")) if name.startswith("mean_") else f"std_{name}"] = sd
        s["delta_acc"] = s["acc_with"] - s["acc_base"]
        return s

    return {"by_prompt_set": {ps: block([r for r in rows if r["prompt_set"] == ps]) for ps in PROMPT_SETS}}


def icl_accuracy(model: Any, trials: Sequence[PreparedTrial]) -> float:
    """ICL accuracy: the fraction of ``trials`` whose clean prompt (the demonstrations and the query) gives the answer's
    first token as its top-1 next token (the reference's first-token measure), in [0, 1]; one forward pass per trial."""
    with torch.inference_mode():
        hits = [int(model(**pt.clean.inputs).logits[0, -1].argmax()) == pt.clean.target_id for pt in trials]
    return statistics.fmean(hits) if hits else float("nan")
