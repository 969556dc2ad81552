"""Mean head activations: what each attention head writes, per slot of the ICL prompt, averaged over trials.

A head's activation is its slice of the input of the layer's attention output projection. Tokens of a
multi-token word are averaged into that word's slot, so prompts with different tokenizations share one
slot layout (the dummy labels). ``exact`` mode stacks every trial and takes ``mean(dim=0)`` as the reference
does (bit-identical); ``fast`` mode keeps a float32 running sum, so memory does not grow with the trials.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from fv.model.tree import ModelInfo
from fv.runtime.hooks import capture_inputs
from fv.runtime.prepared import PreparedPrompt


def trial_head_activations(model: Any, info: ModelInfo, prompt: PreparedPrompt) -> torch.Tensor:
    """(layers, heads, slots, head_dim) activations of one prompt, in the model's dtype and device."""
    idx_map, idx_avg = prompt.idx_map or {}, prompt.idx_avg or {}
    with capture_inputs(info.attn_out) as captured:
        model(**prompt.inputs)
    split = [captured[i].view(*captured[i].shape[:-1], info.n_heads, info.head_dim) for i in range(info.n_layers)]
    stack = torch.vstack(split).permute(0, 2, 1, 3)  # (layers, heads, tokens, head_dim)
    filtered = stack[:, :, list(idx_map.keys())]
    for i, j in idx_avg.values():
        filtered[:, :, idx_map[i]] = stack[:, :, i : j + 1].mean(axis=2)
    return filtered


def mean_head_activations(model: Any, info: ModelInfo, prompts: Sequence[PreparedPrompt], n_slots: int,
                          mode: str = "exact", progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """(layers, heads, slots, head_dim) float32 mean over the clean prompts."""
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
    for p in prompts:
        total += trial_head_activations(model, info, p).to("cpu", torch.float32)
        if progress:
            progress(1)
    return total / n
