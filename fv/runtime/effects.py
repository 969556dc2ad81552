"""Indirect effects: how much each head, patched at the last token with its mean activation, raises the
probability of the target's first token on a shuffled-label (corrupted) prompt.

``exact`` mode (here) follows the reference operation for operation (one full forward per (layer, head), the
patched projection recomputed with the reference's per-family op, ``ModelInfo.project``), so on the same device
and dtype every number is bit-identical to it. ``fast`` mode (``fv.runtime.effects_fast``) runs each prompt's
prefix once and every (layer, head) patch of its last token in shared passes. ``indirect_effects`` runs either,
falling back to exact mode where fast mode cannot drive the model.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import torch

from fv.model.tree import ModelInfo
from fv.runtime.effects_fast import FastUnavailable, effects_fast, patch_fn
from fv.runtime.hooks import replace_output
from fv.runtime.prepared import PreparedPrompt, equal_passes


def trial_effect_exact(model: Any, info: ModelInfo, prompt: PreparedPrompt, mean_acts: torch.Tensor) -> torch.Tensor:
    """One trial's indirect effect of every head, exact mode: one patched forward per (layer, head).

    The change in probability of the target's first token at the last position, patched minus unpatched, on the
    corrupted ``prompt``. ``mean_acts`` is ``(layers, heads, slots, head_dim)``; returns ``(layers, heads)`` float32.
    """
    storage = torch.zeros(info.n_layers, info.n_heads, 1)
    clean_probs = torch.softmax(model(**prompt.inputs).logits[:, -1, :][0], dim=-1)
    index = torch.LongTensor([prompt.target_id]).to(info.device).squeeze()
    full = prompt.idx_map_full
    slots = [full[p] for p in prompt.predictive_positions]
    for layer in range(info.n_layers):
        for head in range(info.n_heads):
            with replace_output(info.attn_out[layer], patch_fn(info, layer, [(-1, head)], mean_acts, slots)):
                out = model(**prompt.inputs).logits[:, -1, :]
            probs = torch.softmax(out, dim=-1)
            storage[layer, head, 0] = (probs - clean_probs).index_select(1, index).squeeze()
    return storage.squeeze()


def indirect_effects(model: Any, info: ModelInfo, prompts: Sequence[PreparedPrompt], mean_acts: torch.Tensor,
                     pad_id: int = 0, mode: str = "exact", progress: Callable[[int], None] | None = None,
                     chunk_rows: int | None = None, trials_per_pass: int = 8, keep: Callable | None = None) -> torch.Tensor:
    """(trials, layers, heads) float32 indirect effects over the corrupted prompts.

    ``fast`` mode handles at most ``trials_per_pass`` trials per prefix pass, in passes of equal size (10 trials
    at 8 per pass: two passes of 5, not 8 and 2) and of prompts of near length (sorted by length, so a pass pads
    little); it falls back to exact mode, with a warning, for a model whose forward pass cannot be driven with a
    reusable key/value cache. ``keep(prompts, prefix_kv, lengths)``, when given, receives each fast pass's prefix
    key/value cache (per layer (keys, values), right-padded; the real length of each prompt less its last token).
    """
    out = torch.zeros(len(prompts), info.n_layers, info.n_heads)
    done = [False] * len(prompts)
    if mode == "fast":
        # a single-token prompt has no prefix to cache: exact mode (below) takes it, fast mode the others
        length = [int(p.inputs["input_ids"].shape[1]) for p in prompts]
        order = sorted((i for i in range(len(prompts)) if length[i] > 1), key=length.__getitem__)
        for part in equal_passes(len(order), trials_per_pass):
            idx = [order[i] for i in part]
            try:
                out[idx] = effects_fast(model, info, [prompts[i] for i in idx], mean_acts, chunk_rows, pad_id, keep)
            except FastUnavailable as exc:
                warnings.warn(f"fast indirect effect unavailable ({exc}); using exact mode", RuntimeWarning, stacklevel=2)
                break
            for i in idx:
                done[i] = True
            if progress:
                progress(len(idx))
    for k, prompt in enumerate(prompts):
        if not done[k]:
            out[k] = trial_effect_exact(model, info, prompt, mean_acts)
            if progress:
                progress(1)
    return out


def pad_token_id(tokenizer: Any) -> int:
    """The id fast mode pads prefixes with (never attended to): the pad token, else EOS, else 0."""
    pad = getattr(tokenizer, "pad_token_id", None)
    return pad if pad is not None else (getattr(tokenizer, "eos_token_id", None) or 0)
