"""Indirect effects: how much each head, patched at the last token with its mean activation, raises the
probability of the target's first token on a shuffled-label (corrupted) prompt.

``exact`` mode follows the reference operation for operation (one full forward per (layer, head), the patched
projection recomputed as ``torch.matmul(input, weight.T)``), so on the same device and dtype every number is
bit-identical to it. ``fast`` mode uses that a last-token patch cannot change earlier positions: it runs the
prompt prefix once, keeps its key/value cache, and sends the last token alone through the model for every
(layer, head) at once, batched in chunks, with an unpatched row as the baseline.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from fv.hooks import hooked, replace_output
from fv.modeltree import ModelInfo
from fv.prompts import answer_ids, full_idx_map, slot_maps, token_meta_labels

LAST_TOKEN_LABEL = "query_predictive_token"


@dataclass
class CorruptedPrompt:
    """What the patching needs from one trial's corrupted prompt."""

    inputs: Any
    target_ids: list[int]
    positions: list[int]  # token positions labelled as the last (predictive) token
    idx_map: dict[int, int]


def prepare(tokenizer: Any, info: ModelInfo, prompt_data: dict, dummy: Sequence[tuple[int, str]], prepend_bos: bool) -> CorruptedPrompt:
    token_labels, text = token_meta_labels(prompt_data, tokenizer, prepend_bos=prepend_bos)
    idx_map, idx_avg = slot_maps(token_labels, dummy)
    ids = answer_ids(tokenizer, text, prompt_data["query_target"]["output"])[:1]
    return CorruptedPrompt(
        inputs=tokenizer([text], return_tensors="pt").to(info.device), target_ids=ids,
        positions=[pos for pos, _, lab in token_labels if lab == LAST_TOKEN_LABEL],
        idx_map=full_idx_map(idx_map, idx_avg),
    )


def _patch_fn(info: ModelInfo, layer: int, rows: Sequence[tuple[int, int]], mean_acts: torch.Tensor,
              slots: Sequence[int]) -> Callable:
    """Hook body: set (row, last token, head) to the head's mean activation, then recompute the projection."""
    weight = info.attn_out[layer].weight

    def fn(x: torch.Tensor, _out: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.view(*shape[:-1], info.n_heads, info.head_dim)
        for row, head in rows:
            for slot in slots:
                x[row, -1, head] = mean_acts[layer, head, slot]
        return torch.matmul(x.view(*shape), weight.T)

    return fn


def trial_effect_exact(model: Any, info: ModelInfo, prompt: CorruptedPrompt, mean_acts: torch.Tensor) -> torch.Tensor:
    storage = torch.zeros(info.n_layers, info.n_heads, 1)
    clean_probs = torch.softmax(model(**prompt.inputs).logits[:, -1, :][0], dim=-1)
    index = torch.LongTensor(prompt.target_ids).to(info.device).squeeze()
    slots = [prompt.idx_map[p] for p in prompt.positions]
    for layer in range(info.n_layers):
        for head in range(info.n_heads):
            with replace_output(info.attn_out[layer], _patch_fn(info, layer, [(-1, head)], mean_acts, slots)):
                out = model(**prompt.inputs).logits[:, -1, :]
            probs = torch.softmax(out, dim=-1)
            storage[layer, head, 0] = (probs - clean_probs).index_select(1, index).squeeze()
    return storage.squeeze()


class FastUnavailable(RuntimeError):
    """The model cannot be driven with a key/value cache the way fast mode needs."""


def trial_effect_fast(model: Any, info: ModelInfo, prompt: CorruptedPrompt, mean_acts: torch.Tensor,
                      chunk_rows: int = 256) -> torch.Tensor:
    ids = prompt.inputs["input_ids"]
    if ids.shape[1] < 2:
        raise FastUnavailable("prompt has a single token")
    try:
        prefix = model(input_ids=ids[:, :-1], use_cache=True)
        cache = prefix.past_key_values
        if cache is None or not hasattr(cache, "batch_repeat_interleave"):
            raise FastUnavailable(f"{type(model).__name__} returns no reusable key/value cache")
    except TypeError as exc:
        raise FastUnavailable(str(exc)) from exc
    slots = [prompt.idx_map[p] for p in prompt.positions]
    pairs = [(layer, head) for layer in range(info.n_layers) for head in range(info.n_heads)]
    rows_all: list[tuple[int, int] | None] = [None] + pairs  # row 0 of the first chunk is the unpatched baseline
    probs_rows: list[torch.Tensor] = []
    target = prompt.target_ids[0]
    for start in range(0, len(rows_all), chunk_rows):
        chunk = rows_all[start : start + chunk_rows]
        n = len(chunk)
        c = copy.deepcopy(cache)
        c.batch_repeat_interleave(n)
        by_layer: dict[int, list[tuple[int, int]]] = {layer: [] for layer in range(info.n_layers)}
        for r, lh in enumerate(chunk):
            if lh is not None:
                by_layer[lh[0]].append((r, lh[1]))
        regs = []
        for layer in range(info.n_layers):
            fn = _patch_fn(info, layer, by_layer[layer], mean_acts, slots)
            regs.append((info.attn_out[layer], lambda _m, inp, out, fn=fn: fn(inp[0], out)))
        last = ids[:, -1:].expand(n, 1)
        mask = torch.ones(n, ids.shape[1], dtype=torch.long, device=ids.device)
        with hooked(regs):
            logits = model(input_ids=last, attention_mask=mask, past_key_values=c, use_cache=True).logits[:, -1, :]
        probs_rows.append(torch.softmax(logits, dim=-1)[:, target])
    probs = torch.cat(probs_rows)
    effect = (probs[1:] - probs[0]).to("cpu", torch.float32)
    return effect.view(info.n_layers, info.n_heads)


def indirect_effects(model: Any, tokenizer: Any, info: ModelInfo, prompts: Sequence[dict], mean_acts: torch.Tensor,
                     dummy: Sequence[tuple[int, str]], prepend_bos: bool, mode: str = "exact",
                     progress: Callable[[int], None] | None = None, chunk_rows: int = 256) -> torch.Tensor:
    """(trials, layers, heads) float32 indirect effects over the corrupted prompts."""
    out = torch.zeros(len(prompts), info.n_layers, info.n_heads)
    for k, pd_ in enumerate(prompts):
        prompt = prepare(tokenizer, info, pd_, dummy, prepend_bos)
        if mode == "fast":
            try:
                out[k] = trial_effect_fast(model, info, prompt, mean_acts, chunk_rows)
            except FastUnavailable as exc:
                warnings.warn(f"fast indirect effect unavailable ({exc}); using exact mode", RuntimeWarning, stacklevel=2)
                mode = "exact"
        if mode == "exact":
            out[k] = trial_effect_exact(model, info, prompt, mean_acts)
        if progress:
            progress(1)
    return out
