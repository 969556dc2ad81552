"""Mean head activations: what each attention head writes, per slot of the ICL prompt, averaged over trials.

A head's activation is its slice of the input of the layer's attention output projection. Tokens of a
multi-token word are averaged into that word's slot, so prompts with different tokenizations share one
slot layout (the dummy labels). ``exact`` mode stacks every trial and takes ``mean(dim=0)`` as the reference
does (bit-identical); ``fast`` mode runs the prompts in right-padded batches (causal attention never looks at
the pads, so every real position is computed as alone), stops each pass at the last layer's output projection
(its MLP and the unembedding are not needed) and keeps a float32 running sum, so memory does not grow with the
trials.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from fv.model.tree import ModelInfo
from fv.runtime.hooks import capture_inputs, forward_until
from fv.runtime.prepared import PreparedPrompt, equal_passes


def trial_head_activations(model: Any, info: ModelInfo, prompt: PreparedPrompt) -> torch.Tensor:
    """(layers, heads, slots, head_dim) activations of one prompt, in the model's dtype and device."""
    with capture_inputs(info.attn_out) as captured:
        model(**prompt.inputs)
    return _slots_of(info, prompt, [captured[i] for i in range(info.n_layers)])


def _slots_of(info: ModelInfo, prompt: PreparedPrompt, captured: list[torch.Tensor]) -> torch.Tensor:
    """One prompt's captured projection inputs (per layer: (1, tokens, heads * head_dim)) averaged into its slots."""
    idx_map, idx_avg = prompt.idx_map or {}, prompt.idx_avg or {}
    split = [c.view(*c.shape[:-1], info.n_heads, info.head_dim) for c in captured]
    stack = torch.vstack(split).permute(0, 2, 1, 3)  # (layers, heads, tokens, head_dim)
    filtered = stack[:, :, list(idx_map.keys())]
    for i, j in idx_avg.values():
        filtered[:, :, idx_map[i]] = stack[:, :, i : j + 1].mean(axis=2)
    return filtered


def mean_head_activations(model: Any, info: ModelInfo, prompts: Sequence[PreparedPrompt], n_slots: int,
                          mode: str = "exact", progress: Callable[[int], None] | None = None, batch: int = 16,
                          pad_id: int = 0) -> torch.Tensor:
    """(layers, heads, slots, head_dim) float32 mean over the clean prompts (in fast mode at most ``batch`` prompts a
    pass, in passes of equal size)."""
    shape = (info.n_layers, info.n_heads, n_slots, info.head_dim)
    n = len(prompts)
    if mode == "exact":
        storage = torch.zeros(n, *shape)
        for k, p in enumerate(prompts):
            storage[k] = trial_head_activations(model, info, p)
            if progress:
                progress(1)
        return storage.mean(dim=0)
    total = torch.zeros(shape, dtype=torch.float32)
    for part in equal_passes(n, batch):  # 20 prompts at 16 a pass run as 10 and 10
        group = [prompts[i] for i in part]
        for acts in _batch_head_activations(model, info, group, pad_id):
            total += acts.to("cpu", torch.float32)
        if progress:
            progress(len(group))
    return total / n


def _batch_head_activations(model: Any, info: ModelInfo, prompts: Sequence[PreparedPrompt], pad_id: int) -> list[torch.Tensor]:
    """Each prompt's slot activations from one right-padded pass over all of them."""
    lengths = [int(p.inputs["input_ids"].shape[1]) for p in prompts]
    dev = prompts[0].inputs["input_ids"].device
    ids = torch.full((len(prompts), max(lengths)), pad_id, dtype=torch.long, device=dev)
    mask = torch.zeros_like(ids)
    for k, (p, n) in enumerate(zip(prompts, lengths)):
        ids[k, :n] = p.inputs["input_ids"][0]
        mask[k, :n] = 1
    with capture_inputs(info.attn_out) as captured:  # nothing after the last layer's projection is needed
        forward_until(model, info.attn_out[-1], input_ids=ids, attention_mask=mask)
    return [_slots_of(info, p, [captured[i][k : k + 1, :n] for i in range(info.n_layers)])
            for k, (p, n) in enumerate(zip(prompts, lengths))]
