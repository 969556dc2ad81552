"""Indirect effects in ``fast`` mode: a last-token patch cannot change earlier positions, so each prompt's prefix
runs once, its key/value cache is kept, and the last token goes through the model for every (layer, head) at
once, as query positions that share the trial's cache, beside one unpatched row, the baseline. A patch at layer
``l`` leaves the states below ``l`` as the baseline's, so each row starts at its layer from the baseline's input
to it, taken in the same pass. Rows per pass are sized by ``chunk_size`` from the memory budget
(``fv.runtime.memory``, shared with evaluation). ``fv.runtime.effects.indirect_effects`` runs it.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from fv import compat
from fv.model.kv_cache import returned_cache, with_cache
from fv.model.tree import ModelInfo
from fv.runtime.hooks import forward_until
from fv.runtime.memory import free_bytes, logits_rows, model_sizes
from fv.runtime.prepared import PreparedPrompt


def patch_fn(info: ModelInfo, layer: int, rows: Sequence[tuple[int, int]], mean_acts: torch.Tensor,
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


class FastUnavailable(RuntimeError):
    """The model cannot be driven with a key/value cache the way fast mode needs."""


def prefix_cache(model: Any, info: ModelInfo, prompts: Sequence[PreparedPrompt], pad_id: int
                  ) -> tuple[Any, list[int], list[torch.Tensor]]:
    """One pass over the whole prompts, right-padded to one length: their key/value cache, each prompt's prefix
    length (its last token's position), and, per layer, the model's own attention mask for each last token.

    Right padding leaves every real position exactly where it was: causal attention never looks at the pads.
    The cache is a plain one that keeps every position of every layer (a sliding-window layer's own cache would
    keep only the last window of the padded batch, which is not each prompt's last window). The masks are what
    the model hands each attention block in this pass (causal, sliding window, local/global, padding: whatever
    it builds), read at the last token's row: ``(trials, 1 or heads, full)`` additive, 0 where the last token may
    look. Raises ``FastUnavailable`` for a model whose cache or masks fast mode cannot drive (one line).
    """
    why = compat.no_cache_object(model)
    if why:
        raise FastUnavailable(why)
    lengths = [int(p.inputs["input_ids"].shape[1]) - 1 for p in prompts]
    if min(lengths) < 1:
        raise FastUnavailable("a prompt has a single token")
    full = max(lengths) + 1
    dev = prompts[0].inputs["input_ids"].device
    ids = torch.full((len(prompts), full), pad_id, dtype=torch.long, device=dev)
    mask = torch.zeros((len(prompts), full), dtype=torch.long, device=dev)
    for k, (p, n) in enumerate(zip(prompts, lengths)):
        ids[k, : n + 1] = p.inputs["input_ids"][0]
        mask[k, : n + 1] = 1
    seen: dict[int, Any] = {}

    def grab(j: int) -> Callable:
        def pre(_m, args, kwargs):
            seen[j] = kwargs.get("attention_mask", "absent")
        return pre

    def whole(cache: Any) -> bool:
        kv = compat.cache_kv(cache)  # per-layer objects (4.54 on) or two lists (before): fv.compat
        return len(kv) == info.n_layers and all(isinstance(k, torch.Tensor) and k.shape[-2] == full for k, _ in kv)

    handles = [a.register_forward_pre_hook(grab(j), with_kwargs=True) for j, a in enumerate(info.attn_modules)]
    try:
        # only the cache and the masks are needed: the pass ends at the last layer's output projection, after its
        # keys and values are in the cache handed in
        cache = compat.new_dynamic_cache()
        forward_until(model, info.attn_out[-1], input_ids=ids, attention_mask=mask, **with_cache(model, cache))
        if not whole(cache):  # a model that fills a cache of its own: the whole pass, and the cache it returns
            seen.clear()
            cache = returned_cache(model(input_ids=ids, attention_mask=mask, **with_cache(model, compat.new_dynamic_cache())))
    except TypeError as exc:
        raise FastUnavailable(str(exc)) from exc
    finally:
        for h in handles:
            h.remove()
    if not whole(cache):
        raise FastUnavailable(f"{type(model).__name__} returns no key/value cache of every position fv can reuse")
    rows = [last_rows(seen.get(j, "absent"), lengths, full, info.dtype, dev) for j in range(info.n_layers)]
    return cache, lengths, rows


def last_rows(m: Any, lengths: list[int], full: int, dtype: torch.dtype, dev: torch.device) -> torch.Tensor:
    """The last token's row of the mask one attention block was handed, as ``(trials, 1 or heads, full)`` additive.

    ``None`` is what sdpa is handed where the mask is plain causal (it then runs ``is_causal``): every key up to
    the last token. A 4-D mask (bool: True attends; float: added to the scores) gives its row at the last token.
    Anything else (a 2-D padding mask for flash attention, flex attention's block mask) cannot be reshaped for
    the patched rows: ``FastUnavailable``.
    """
    neg = torch.finfo(dtype).min
    if m is None:
        pos = torch.arange(full, device=dev)
        last = torch.tensor(lengths, device=dev).view(-1, 1)
        return torch.where(pos.view(1, -1) <= last, 0.0, neg).to(dtype).unsqueeze(1)
    if isinstance(m, torch.Tensor) and m.dim() == 4 and m.shape[-1] == full and m.shape[-2] == full:
        idx = torch.tensor(lengths, device=m.device)
        rows = m[torch.arange(len(lengths), device=m.device), :, idx]  # (trials, 1 or heads, full)
        if rows.dtype == torch.bool:
            return torch.where(rows, 0.0, neg).to(dtype)
        return rows.to(dtype)
    what = "no attention mask argument" if isinstance(m, str) else f"a {type(m).__name__} of shape {tuple(getattr(m, 'shape', ()))}"
    raise FastUnavailable(f"its attention blocks are handed {what}, not a 4-D mask fast mode can take rows of")


def _row_masks(rows: list[torch.Tensor], lengths: list[int], full: int, n_rows: int) -> list[torch.Tensor]:
    """Per layer, the mask of ``n_rows`` patched copies of each trial's last token: ``(trials, 1 or heads, n_rows,
    full + n_rows)``. Row ``r`` sees the prefix keys the model's own mask lets the last token see, and its own key
    (cache slot ``full + r``) with the weight the model gives the last token's own key; never the unpatched last
    token's cached key, never another row's."""
    out = []
    for row in rows:
        n, h, _ = row.shape
        neg = torch.finfo(row.dtype).min
        m = torch.full((n, h, n_rows, full + n_rows), neg, dtype=row.dtype, device=row.device)
        m[..., :full] = row.unsqueeze(2)
        own = row[torch.arange(n), :, torch.tensor(lengths, device=row.device)]  # (trials, h)
        for k, last in enumerate(lengths):
            m[k, :, :, last] = neg
        r = torch.arange(n_rows, device=row.device)
        m[:, :, r, full + r] = own.unsqueeze(-1).expand(n, h, n_rows)
        out.append(m)
    return out


def _mask_hook(masks: list[torch.Tensor], j: int, full: int) -> Callable:
    """Attention pre-hook of layer ``j``: the layer's row mask, cut to the rows this layer runs."""

    def pre(_m, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        m = hidden.shape[1]
        return args, {**kwargs, "attention_mask": masks[j][..., :m, : full + m]}

    return pre


def effects_fast(model: Any, info: ModelInfo, prompts: Sequence[PreparedPrompt], mean_acts: torch.Tensor,
                 chunk_rows: int | None = None, pad_id: int = 0, keep: Callable | None = None) -> torch.Tensor:
    """(len(prompts), layers, heads) indirect effects from one pass over the prompts and a few passes of last tokens.

    Each (layer, head) patch is a row: the trial's last token, patched there. A trial's rows all attend to the
    same cached prompt (no copy per row): row ``r`` is a query at the last token's position whose mask, in each
    layer, is the model's own mask of the last token over the prefix (sliding windows, local/global layers and
    padding included: ``prefix_cache``) plus its own key only. ``chunk_rows`` (default: sized from the
    free memory, ``chunk_size``) bounds the rows of one pass, whole layers at a time.
    Rows are ordered by the layer they start at, so layer ``j`` runs a prefix of the positions; a row enters
    at its layer with the baseline's last-token input to that layer.
    """
    cache, lengths, last_rows = prefix_cache(model, info, prompts, pad_id)
    prefix_kv = compat.cache_kv(cache)
    width, n = max(lengths) + 1, len(prompts)  # cached positions: every prompt, its last token included
    dev = prompts[0].inputs["input_ids"].device
    slots = [[p.idx_map_full[pos] for pos in p.predictive_positions] for p in prompts]
    targets = torch.tensor([p.target_id for p in prompts], device=dev)
    last = torch.stack([p.inputs["input_ids"][0, -1] for p in prompts])
    dtype = info.dtype
    heads = info.n_heads

    def run(layers: list[int], base_inputs) -> tuple[torch.Tensor, list]:
        """(trials, rows) target probabilities and, per layer, the rows' input to it. The rows: every head of
        every layer in ``layers``, by layer; when ``base_inputs`` is None, first the unpatched row (the
        baseline), whose input to each layer the rows starting there take, in this same pass."""
        starts = ([0] if base_inputs is None else []) + [l for l in layers for _ in range(heads)]
        n_rows = len(starts)
        compat.set_cache_kv(cache, prefix_kv)  # the prefix alone: the last pass's rows dropped
        masks = _row_masks(last_rows, lengths, width, n_rows)
        # handed to the model only so that it builds no mask of its own; each attention block gets its layer's
        mask = torch.zeros((n, 1, n_rows, width + n_rows), dtype=dtype, device=dev)
        pos = torch.tensor(lengths, device=dev).view(n, 1).expand(n, n_rows)
        active = [sum(1 for s in starts if s <= j) for j in range(info.n_layers)]
        offset = 1 if base_inputs is None else 0
        first = {l: offset + k * heads for k, l in enumerate(layers)}  # layer -> its first row
        # rows starting at layer j > 0 take the baseline's input to j (layer 0's input is the same token's embedding)
        spans = [(first[j], first[j] + heads) if j in first and j > 0 else (0, 0) for j in range(info.n_layers)]
        captured: list = [None] * info.n_layers
        handles = []
        try:
            for j, layer in enumerate(info.layers):
                handles.append(layer.register_forward_pre_hook(
                    _seq_pre_hook(j, active, spans, base_inputs, captured, n_rows, width), with_kwargs=True))
                handles.append(layer.register_forward_hook(_seq_post_hook(), with_kwargs=True))
                handles.append(info.attn_modules[j].register_forward_pre_hook(_mask_hook(masks, j, width), with_kwargs=True))
                if j in first:  # elsewhere the projection's own output, as in the reference's unpatched layers
                    rows = [(first[j] + h, h) for h in range(heads)]
                    handles.append(info.attn_out[j].register_forward_hook(_seq_patch(info, j, rows, mean_acts, slots)))
            logits = model(input_ids=last.view(n, 1).expand(n, n_rows), attention_mask=mask, position_ids=pos,
                           **with_cache(model, cache)).logits
        finally:
            for h in handles:
                h.remove()
            _FULL.clear()
        p = torch.softmax(logits, dim=-1)
        return p.gather(2, targets.view(n, 1, 1).expand(n, n_rows, 1)).squeeze(2).to("cpu", torch.float64), captured

    per_row = chunk_rows or chunk_size(model, info, width, dev)
    per_chunk = max(1, (per_row - n) // max(1, n * heads))  # layers per pass (the first also holds n baseline rows)
    effects = torch.empty(n, info.n_layers, heads, dtype=torch.float64)
    base_inputs, base = None, None
    for l0 in range(0, info.n_layers, per_chunk):
        layers = list(range(l0, min(info.n_layers, l0 + per_chunk)))
        probs, inputs = run(layers, base_inputs)
        if base_inputs is None:  # the first pass: its row 0 is the baseline
            base, probs = probs[:, :1], probs[:, 1:]
            base_inputs = [h[:, :1].clone() for h in inputs]  # (trials, 1, d) per layer, not views of the whole pass
        del inputs
        effects[:, layers] = (probs - base).view(n, len(layers), heads)
    if keep is not None:  # the prefix cache, for the evaluation of these prompts (fv.runtime.evaluation.BaselineStore)
        keep(prompts, prefix_kv, lengths)
    return effects.to(torch.float32)


_FULL: dict[int, torch.Tensor] = {}  # a layer's full input, from its pre-hook to its post-hook


def _seq_pre_hook(j: int, active: list[int], spans: list[tuple[int, int]], base_inputs, captured: list,
                  n_rows: int, width: int) -> Callable:
    """Layer ``j`` runs only the positions started by now; those starting here take the baseline's input."""

    def cut(value: Any, m: int) -> Any:
        if isinstance(value, torch.Tensor):
            if value.dim() == 4 and value.shape[-2:] == (n_rows, width + n_rows):
                return value[..., :m, : width + m]
            if value.dim() >= 2 and value.shape[1] == n_rows:
                return value[:, :m]
            if value.dim() == 1 and value.shape[0] == n_rows:
                return value[:m]
            return value
        if isinstance(value, (tuple, list)):
            return type(value)(cut(v, m) for v in value)
        if isinstance(value, dict):
            return {k: cut(v, m) for k, v in value.items()}
        return value

    def pre(mod, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        m = max(active[j], 1)
        lo, hi = spans[j]
        if hi > lo:  # rows starting here: the baseline's input, kept or this pass's row 0
            source = base_inputs[j] if base_inputs is not None else hidden[:, :1]
            hidden = hidden.clone()
            hidden[:, lo:hi] = source
        captured[j] = hidden
        _FULL[id(mod)] = hidden
        if m == n_rows:
            return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})
        kwargs = cut(kwargs, m)
        if args:
            return (hidden[:, :m], *cut(tuple(args[1:]), m)), kwargs
        kwargs["hidden_states"] = hidden[:, :m]
        return args, kwargs

    return pre


def _seq_post_hook() -> Callable:
    """Put the positions a layer ran back in front of those it skipped."""

    def post(m, _args, _kwargs, output):
        full = _FULL.pop(id(m))
        out = compat.layer_hidden(output)  # a tuple on transformers 4.x, the tensor on 5.x
        if out.shape[1] != full.shape[1]:
            out = torch.cat([out, full[:, out.shape[1]:].to(out.dtype)], dim=1)
        return compat.with_layer_hidden(output, out)

    return post


def _seq_patch(info: ModelInfo, layer: int, rows: list[tuple[int, int]], mean_acts: torch.Tensor,
               slots: list[list[int]]) -> Callable:
    """Hook: the rows that start at this layer (position ``r`` of every trial, head ``h``) get that trial's mean
    activation in head ``h`` and their projection recomputed with the reference's per-family op; the other rows
    keep the projection's own output, as every unpatched layer does in the reference's patched pass."""
    weight = info.attn_out[layer].weight
    r_idx = torch.tensor([r for r, _ in rows], device=weight.device)
    h_idx = torch.tensor([h for _, h in rows], device=weight.device)
    k_idx = torch.arange(len(rows), device=weight.device)
    depth = max(len(s) for s in slots)
    # (trials, rows, head_dim) per write; the reference writes one slot per predictive position, the last winning
    values = [torch.stack([torch.stack([mean_acts[layer, h, s[min(i, len(s) - 1)]] for _, h in rows]) for s in slots])
              .to(weight.device, weight.dtype) for i in range(depth)]

    def hook(_m, inputs, out):
        x = inputs[0][:, r_idx]  # (trials, rows starting here, heads * head_dim), a copy
        shape = x.shape
        x = x.view(*shape[:-1], info.n_heads, info.head_dim)
        for v in values:
            x[:, k_idx, h_idx] = v
        out = out.clone()
        out[:, r_idx] = info.project(layer, x.view(*shape)).to(out.dtype)
        return out

    return hook


def chunk_size(model: Any, info: ModelInfo, width: int, device: torch.device, share: float = 0.25,
               most: int = 4096, least: int = 16) -> int:
    """Rows per last-token pass from the memory free on the device: a share of it over one row's need (its
    attention scores over the prefix and the other rows, its hidden states, its logits and softmax in float32),
    and never more rows than ``LOGITS_BUDGET`` of logits (``fv.runtime.memory``: the peak does not grow with the trials)."""
    elem, vocab, inter = model_sizes(model, info)
    keys = width + info.n_layers * info.n_heads
    per_row = (3 * info.n_heads * keys * 4 + keys * elem + 4 * info.d_model * elem + (info.n_layers + 8) * info.d_model * elem
               + 3 * inter * elem + 3 * vocab * 4)
    return int(max(least, min(most, logits_rows(vocab), share * free_bytes(device) // max(per_row, 1))))
