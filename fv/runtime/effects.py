"""Indirect effects: how much each head, patched at the last token with its mean activation, raises the
probability of the target's first token on a shuffled-label (corrupted) prompt.

``exact`` mode follows the reference operation for operation (one full forward per (layer, head), the patched
projection recomputed with the reference's per-family op, ``ModelInfo.project``), so on the same device and dtype every number is
bit-identical to it. ``fast`` mode uses that a last-token patch cannot change earlier positions: it runs the
prompt prefix once, keeps its key/value cache, and sends the last token alone through the model for every
(layer, head) at once, batched in chunks, with an unpatched row as the baseline.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import torch

from fv.model.tree import ModelInfo
from fv.runtime.hooks import hooked, replace_output
from fv.runtime.prepared import PreparedPrompt


def _patch_fn(info: ModelInfo, layer: int, rows: Sequence[tuple[int, int]], mean_acts: torch.Tensor,
              slots: Sequence[int]) -> Callable:
    """Hook body: set (row, last token, head) to the head's mean activation, then recompute the projection."""

    def fn(x: torch.Tensor, _out: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.view(*shape[:-1], info.n_heads, info.head_dim)
        for row, head in rows:
            for slot in slots:
                x[row, -1, head] = mean_acts[layer, head, slot]
        return info.project(layer, x.view(*shape))

    return fn


def trial_effect_exact(model: Any, info: ModelInfo, prompt: PreparedPrompt, mean_acts: torch.Tensor) -> torch.Tensor:
    storage = torch.zeros(info.n_layers, info.n_heads, 1)
    clean_probs = torch.softmax(model(**prompt.inputs).logits[:, -1, :][0], dim=-1)
    index = torch.LongTensor([prompt.target_id]).to(info.device).squeeze()
    full = prompt.idx_map_full
    slots = [full[p] for p in prompt.predictive_positions]
    for layer in range(info.n_layers):
        for head in range(info.n_heads):
            with replace_output(info.attn_out[layer], _patch_fn(info, layer, [(-1, head)], mean_acts, slots)):
                out = model(**prompt.inputs).logits[:, -1, :]
            probs = torch.softmax(out, dim=-1)
            storage[layer, head, 0] = (probs - clean_probs).index_select(1, index).squeeze()
    return storage.squeeze()


class FastUnavailable(RuntimeError):
    """The model cannot be driven with a key/value cache the way fast mode needs."""


def _prefix_cache(model: Any, prompts: Sequence[PreparedPrompt], pad_id: int) -> tuple[Any, list[int]]:
    """One pass over the prompts without their last token, right-padded to one length, keeping only the cache.

    Right padding leaves every real position exactly where it was: causal attention never looks at the pads.
    """
    lengths = [int(p.inputs["input_ids"].shape[1]) - 1 for p in prompts]
    if min(lengths) < 1:
        raise FastUnavailable("a prompt has a single token")
    width = max(lengths)
    dev = prompts[0].inputs["input_ids"].device
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=dev)
    mask = torch.zeros((len(prompts), width), dtype=torch.long, device=dev)
    for k, (p, n) in enumerate(zip(prompts, lengths)):
        ids[k, :n] = p.inputs["input_ids"][0, :n]
        mask[k, :n] = 1
    try:
        try:  # only the cache is needed: skip the unembedding of every position where the model allows
            out = model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
        except TypeError:
            out = model(input_ids=ids, attention_mask=mask, use_cache=True)
    except TypeError as exc:
        raise FastUnavailable(str(exc)) from exc
    cache = out.past_key_values
    layers = getattr(cache, "layers", None)
    if not layers or not all(isinstance(getattr(l, "keys", None), torch.Tensor) for l in layers):
        raise FastUnavailable(f"{type(model).__name__} returns no key/value cache fv can reuse")
    return cache, lengths


def effects_fast(model: Any, info: ModelInfo, prompts: Sequence[PreparedPrompt], mean_acts: torch.Tensor,
                 chunk_rows: int = 256, pad_id: int = 0) -> torch.Tensor:
    """(len(prompts), layers, heads) indirect effects from one prefix pass and batched last-token passes.

    Rows are (trial, layer, head) patches plus one unpatched baseline row per trial; each row runs only the
    last token, against its own trial's cached prefix, at that trial's position.
    """
    cache, lengths = _prefix_cache(model, prompts, pad_id)
    prefix_kv = [(l.keys, l.values) for l in cache.layers]
    width = max(lengths)
    dev = prompts[0].inputs["input_ids"].device
    pairs = [(layer, head) for layer in range(info.n_layers) for head in range(info.n_heads)]
    rows = [(k, lh) for k in range(len(prompts)) for lh in [None] + pairs]
    slots = []
    for p in prompts:
        full = p.idx_map_full
        slots.append([full[pos] for pos in p.predictive_positions])
    probs = torch.empty(len(rows), dtype=torch.float64)
    for start in range(0, len(rows), chunk_rows):
        chunk = rows[start : start + chunk_rows]
        trial = torch.tensor([k for k, _ in chunk], device=dev)
        for layer_cache, (k_, v_) in zip(cache.layers, prefix_kv):
            layer_cache.keys, layer_cache.values = k_.index_select(0, trial), v_.index_select(0, trial)
        mask = torch.zeros((len(chunk), width + 1), dtype=torch.long, device=dev)
        for r, (k, _) in enumerate(chunk):
            mask[r, : lengths[k]] = 1
        mask[:, -1] = 1
        last = torch.stack([prompts[k].inputs["input_ids"][0, -1] for k, _ in chunk]).view(-1, 1)
        pos = torch.tensor([[lengths[k]] for k, _ in chunk], device=dev)
        regs = []
        for layer in range(info.n_layers):
            mine = [(r, lh[1], k) for r, (k, lh) in enumerate(chunk) if lh is not None and lh[0] == layer]
            if mine:
                regs.append((info.attn_out[layer], _rows_patch(info, layer, mine, mean_acts, slots)))
            else:
                regs.append((info.attn_out[layer], lambda _m, inp, _o, layer=layer: info.project(layer, inp[0])))
        with hooked(regs):
            logits = model(input_ids=last, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True).logits[:, -1, :]
        p = torch.softmax(logits, dim=-1)
        targets = torch.tensor([prompts[k].target_id for k, _ in chunk], device=dev)
        probs[start : start + len(chunk)] = p.gather(1, targets.view(-1, 1)).view(-1).to("cpu", torch.float64)
    per = 1 + len(pairs)
    probs = probs.view(len(prompts), per)
    return (probs[:, 1:] - probs[:, :1]).to(torch.float32).view(len(prompts), info.n_layers, info.n_heads)


def _rows_patch(info: ModelInfo, layer: int, mine: list[tuple[int, int, int]], mean_acts: torch.Tensor,
                slots: list[list[int]]) -> Callable:
    """Hook: write each row's head slice at the last token with that trial's mean activation, then project."""
    weight = info.attn_out[layer].weight
    r_idx = torch.tensor([r for r, _, _ in mine], device=weight.device)
    h_idx = torch.tensor([h for _, h, _ in mine], device=weight.device)
    depth = max(len(slots[k]) for _, _, k in mine)
    # the reference writes one slot per predictive position, the last write winning; keep that order per row
    values = [torch.stack([mean_acts[layer, h, slots[k][min(i, len(slots[k]) - 1)]] for _, h, k in mine]).to(weight.device, weight.dtype)
              for i in range(depth)]

    def hook(_m, inputs, _out):
        x = inputs[0]
        shape = x.shape
        x = x.view(*shape[:-1], info.n_heads, info.head_dim)
        for v in values:
            x[r_idx, -1, h_idx] = v
        return info.project(layer, x.view(*shape))

    return hook


def indirect_effects(model: Any, info: ModelInfo, prompts: Sequence[PreparedPrompt], mean_acts: torch.Tensor,
                     pad_id: int = 0, mode: str = "exact", progress: Callable[[int], None] | None = None,
                     chunk_rows: int = 256, trials_per_pass: int = 8) -> torch.Tensor:
    """(trials, layers, heads) float32 indirect effects over the corrupted prompts.

    ``fast`` mode handles ``trials_per_pass`` trials per prefix pass and falls back to exact mode, with a
    warning, for a model whose forward pass cannot be driven with a reusable key/value cache.
    """
    out = torch.zeros(len(prompts), info.n_layers, info.n_heads)
    k = 0
    while k < len(prompts):
        if mode == "fast":
            group = list(prompts[k : k + trials_per_pass])
            try:
                out[k : k + len(group)] = effects_fast(model, info, group, mean_acts, chunk_rows, pad_id)
                k += len(group)
                if progress:
                    progress(len(group))
                continue
            except FastUnavailable as exc:
                warnings.warn(f"fast indirect effect unavailable ({exc}); using exact mode", RuntimeWarning, stacklevel=2)
                mode = "exact"
        out[k] = trial_effect_exact(model, info, prompts[k], mean_acts)
        k += 1
        if progress:
            progress(1)
    return out


def pad_token_id(tokenizer: Any) -> int:
    """The id fast mode pads prefixes with (never attended to): the pad token, else EOS, else 0."""
    pad = getattr(tokenizer, "pad_token_id", None)
    return pad if pad is not None else (getattr(tokenizer, "eos_token_id", None) or 0)
