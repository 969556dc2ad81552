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


def _rows_of(info: ModelInfo, n_trials: int) -> list[tuple[int, int, int]]:
    """(start layer, trial, head) of every patched row, layer-major so the rows a layer runs are a prefix."""
    return [(layer, k, head) for layer in range(info.n_layers) for k in range(n_trials) for head in range(info.n_heads)]


def _take(value: Any, n: int, batch: int) -> Any:
    """``value`` cut to its first ``n`` rows where its first dimension is the batch (tensors, in tuples/dicts)."""
    if isinstance(value, torch.Tensor):
        return value[:n] if value.dim() > 0 and value.shape[0] == batch and n < batch else value
    if isinstance(value, tuple):
        return tuple(_take(v, n, batch) for v in value)
    if isinstance(value, list):
        return [_take(v, n, batch) for v in value]
    if isinstance(value, dict):
        return {k: _take(v, n, batch) for k, v in value.items()}
    return value


def effects_fast(model: Any, info: ModelInfo, prompts: Sequence[PreparedPrompt], mean_acts: torch.Tensor,
                 chunk_rows: int | None = None, pad_id: int = 0) -> torch.Tensor:
    """(len(prompts), layers, heads) indirect effects from one prefix pass and batched last-token passes.

    One unpatched pass of the last tokens gives each trial's baseline probability and its last-token input to
    every layer. Each patched row (trial, layer, head) then runs only the last token, from its layer up,
    against its own trial's cached prefix; rows are ordered by layer so that layer ``j`` runs a prefix of the batch.
    """
    cache, lengths = _prefix_cache(model, prompts, pad_id)
    prefix_kv = [(l.keys, l.values) for l in cache.layers]
    width = max(lengths)
    dev = prompts[0].inputs["input_ids"].device
    slots = [[p.idx_map_full[pos] for pos in p.predictive_positions] for p in prompts]
    targets_all = torch.tensor([p.target_id for p in prompts], device=dev)
    last_all = torch.stack([p.inputs["input_ids"][0, -1] for p in prompts])

    def run(trials: list[int], starts: list[int], patches: dict[int, list], base_inputs) -> tuple[torch.Tensor, list]:
        """Probabilities of each row's target; rows given by trial and start layer, ordered by start layer."""
        n_rows = len(trials)
        trial_t = torch.tensor(trials, device=dev)
        for layer_cache, (k_, v_) in zip(cache.layers, prefix_kv):  # shapes for the mask; each layer gathers its own
            layer_cache.keys, layer_cache.values = k_[:1].expand(n_rows, *k_.shape[1:]), v_[:1].expand(n_rows, *v_.shape[1:])
        active = [sum(1 for s in starts if s <= j) for j in range(info.n_layers)]
        start_rows = []
        for j in range(info.n_layers):
            idx = [r for r, s in enumerate(starts) if s == j]
            start_rows.append((idx[0], idx[-1] + 1) if idx and j > 0 else (0, 0))
        mask = torch.zeros((n_rows, width + 1), dtype=torch.long, device=dev)
        for r, k in enumerate(trials):
            mask[r, : lengths[k]] = 1
        mask[:, -1] = 1
        pos = torch.tensor([[lengths[k]] for k in trials], device=dev)
        captured: list = [None] * info.n_layers
        handles = []
        try:
            for j, layer in enumerate(info.layers):
                handles.append(layer.register_forward_pre_hook(
                    _pre_hook(j, cache, prefix_kv, trial_t, active, base_inputs, start_rows, captured), with_kwargs=True))
                handles.append(layer.register_forward_hook(_post_hook(), with_kwargs=True))
                mine = patches.get(j)
                handles.append(info.attn_out[j].register_forward_hook(
                    _rows_patch(info, j, mine, mean_acts, slots) if mine else
                    (lambda _m, inp, _o, layer=j: info.project(layer, inp[0]))))
            logits = model(input_ids=last_all.index_select(0, trial_t).view(-1, 1), attention_mask=mask, position_ids=pos,
                           past_key_values=cache, use_cache=True).logits[:, -1, :]
        finally:
            for h in handles:
                h.remove()
        p = torch.softmax(logits, dim=-1)
        return p.gather(1, targets_all.index_select(0, trial_t).view(-1, 1)).view(-1).to("cpu", torch.float64), captured

    n = len(prompts)
    base_probs, base_inputs = run(list(range(n)), [0] * n, {}, None)
    base_inputs = [h[:, -1].detach() for h in base_inputs]
    rows = _rows_of(info, n)
    chunk_rows = chunk_rows or chunk_size(model, info, width, dev)
    probs = torch.empty(len(rows), dtype=torch.float64)
    for start in range(0, len(rows), chunk_rows):
        chunk = rows[start : start + chunk_rows]
        patches: dict[int, list] = {}
        for r, (layer, k, head) in enumerate(chunk):
            patches.setdefault(layer, []).append((r, head, k))
        probs[start : start + len(chunk)], _ = run([k for _, k, _ in chunk], [l for l, _, _ in chunk], patches,
                                                   [h.unsqueeze(1) for h in base_inputs])
    effects = torch.empty(n, info.n_layers, info.n_heads, dtype=torch.float64)
    for (layer, k, head), pr in zip(rows, probs):
        effects[k, layer, head] = pr - base_probs[k]
    return effects.to(torch.float32)


def _pre_hook(j: int, cache: Any, prefix_kv: list, trial_t: torch.Tensor, active: list[int],
              base_inputs: list[torch.Tensor] | None, start_rows: list[tuple[int, int]], captured: list) -> Callable:
    """Decoder layer ``j`` runs only the rows started by now (a prefix of the batch; see ``effects_fast``).

    Rows that start at ``j`` take the baseline's last-token input to ``j``; the layer's key/value prefix is
    gathered for its own rows. The full batch travels to the post-hook, which puts the rows back together.
    """

    def pre(_m, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        batch, n = hidden.shape[0], max(active[j], 1)
        lo, hi = start_rows[j]
        if base_inputs is not None and hi > lo:
            hidden = hidden.clone()
            hidden[lo:hi] = base_inputs[j].index_select(0, trial_t[lo:hi])
        captured[j] = hidden
        keys, values = prefix_kv[j]
        cache.layers[j].keys, cache.layers[j].values = keys.index_select(0, trial_t[:n]), values.index_select(0, trial_t[:n])
        kwargs = _take(kwargs, n, batch)
        _FULL[id(_m)] = hidden
        if args:  # some families pass the mask and position embeddings positionally
            return (hidden[:n], *_take(tuple(args[1:]), n, batch)), kwargs
        kwargs["hidden_states"] = hidden[:n]
        return args, kwargs

    return pre


_FULL: dict[int, torch.Tensor] = {}  # a layer's full-batch input, from its pre-hook to its post-hook


def _post_hook() -> Callable:
    """Put the rows a layer ran back on top of the rows it skipped (whose values the next start replaces)."""

    def post(m, _args, _kwargs, output):
        full = _FULL.pop(id(m))
        out = output[0] if isinstance(output, tuple) else output
        if out.shape[0] != full.shape[0]:
            out = torch.cat([out, full[out.shape[0]:].to(out.dtype)], dim=0)
        return (out, *output[1:]) if isinstance(output, tuple) else out

    return post


def chunk_size(model: Any, info: ModelInfo, width: int, device: torch.device, share: float = 0.25,
               most: int = 4096, least: int = 16) -> int:
    """Rows per last-token pass from the memory free on the device: a share of it over one row's need (its
    layer's key/value prefix, its hidden states, its logits and softmax in float32)."""
    cfg = getattr(model.config, "get_text_config", lambda: model.config)()
    elem = torch.empty(0, dtype=info.dtype).element_size()
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or info.n_heads)
    vocab = int(getattr(cfg, "vocab_size", 0) or 0)
    inter = int(getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * info.d_model)
    per_row = (2 * 2 * (width + 1) * kv_heads * info.head_dim * elem + (info.n_layers + 8) * info.d_model * elem
               + 3 * inter * elem + 3 * vocab * 4)
    if torch.device(device).type == "cuda":
        free = torch.cuda.mem_get_info(torch.device(device))[0]
    else:
        free = _available_ram()
    return int(max(least, min(most, share * free // max(per_row, 1))))


def _available_ram() -> int:
    """MemAvailable from /proc/meminfo (Linux), else a conservative 2 GiB."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2 << 30


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
                     chunk_rows: int | None = None, trials_per_pass: int = 8) -> torch.Tensor:
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
