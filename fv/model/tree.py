"""Where things are in a decoder model, found by looking at the module tree, never at the model's name.

The runtime needs three things: the list of decoder layers (to add a vector to a layer's output), each
layer's attention output projection (its input, split by head, is what a head writes), and the head sizes.
The projection is an ``nn.Linear`` (weight ``(out, in)``) or, in GPT-2, transformers' ``Conv1D`` (weight
``(in, out)``). ``recompute_projection`` is the one place that re-applies a projection to patched inputs,
with the operation the reference's indirect-effect hook uses for that family, so patched runs are bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fv.errors import FVError

# How a patched projection input is turned back into the projection's output (the reference's per-family op):
ADDMM_CONV1D = "addmm(bias, x, W)"  # GPT-2: Conv1D, bias kept
ADDMM_LINEAR = "addmm(bias, x, W.T)"  # GPT-NeoX / Pythia: nn.Linear with bias, bias kept
MATMUL = "matmul(x, W.T)"  # GPT-J, Llama, Gemma, OLMo: no bias (a bias would be dropped, as the reference does)

# Families whose patched projection keeps its bias, by ``config.model_type`` (a structural field, not a name).
_BIAS_KEPT = {"gpt2", "gpt_neox"}


def _is_conv1d(m: nn.Module) -> bool:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        return False
    return isinstance(m, Conv1D)


def _features(m: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a linear map, Linear or Conv1D; None for anything else."""
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    if _is_conv1d(m):
        return int(m.weight.shape[0]), int(m.weight.shape[1])
    return None


def projection_op(module: nn.Module, model_type: str) -> str:
    """The recompute op for a projection: Conv1D keeps its bias; a Linear keeps it only where the family does."""
    if _is_conv1d(module):
        return ADDMM_CONV1D
    bias = getattr(module, "bias", None)
    if bias is not None and (model_type in _BIAS_KEPT or model_type not in _KNOWN_TYPES):
        return ADDMM_LINEAR
    return MATMUL


_KNOWN_TYPES = {"gpt2", "gptj", "gpt_neox", "llama", "gemma", "gemma2", "gemma3", "gemma3_text", "olmo", "olmo2"}


def recompute_projection(module: nn.Module, op: str, x: torch.Tensor) -> torch.Tensor:
    """The projection of ``x`` (batch, tokens, in) as ``op`` computes it, shaped (batch, tokens, out).

    For one prompt, ``x.reshape(-1, in)`` is the reference's ``x.squeeze()`` (same values, same memory).
    """
    weight = module.weight
    if hasattr(weight, "quant_state"):  # bitsandbytes 4-bit: dequantize, then the same product, as the reference's hook
        import bitsandbytes as bnb

        weight = bnb.functional.dequantize_4bit(weight.data, weight.quant_state)
    if op == MATMUL:
        return torch.matmul(x, weight.T)
    flat = x.reshape(-1, x.shape[-1])
    w = weight if op == ADDMM_CONV1D else weight.T
    return torch.addmm(module.bias, flat, w).view(*x.shape[:-1], w.shape[1])


@dataclass
class ModelInfo:
    """Shapes and module handles of a decoder model, as the stages use them."""

    n_layers: int
    n_heads: int
    head_dim: int
    d_model: int
    layer_names: list[str]
    attn_out_names: list[str]
    layers: list[nn.Module]
    attn_out: list[nn.Module]
    attn_modules: list[nn.Module]
    model_type: str = ""
    projection: str = MATMUL

    def project(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Layer ``layer``'s attention output projection re-applied to (patched) input ``x``."""
        return recompute_projection(self.attn_out[layer], self.projection, x)

    @property
    def device(self) -> torch.device:
        return self.attn_out[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        w = self.attn_out[0].weight
        qs = getattr(w, "quant_state", None)  # bitsandbytes 4-bit: the dtype it dequantizes to (the checkpoint's)
        return qs.dtype if qs is not None else w.dtype

    def check_edit_layer(self, edit_layer: int) -> None:
        if not 0 <= edit_layer < self.n_layers:
            raise FVError(f"--edit-layer {edit_layer} is outside this model: it has {self.n_layers} layers (0..{self.n_layers - 1}). Pick a layer in that range.")


def _cfg(model: nn.Module) -> Any:
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise FVError("the model has no .config; fv needs a Hugging Face causal LM.")
    return getattr(cfg, "get_text_config", lambda: cfg)()


def _qualified_name(model: nn.Module, target: nn.Module) -> str | None:
    """``target``'s dotted name inside ``model`` ("" for the model itself), found by identity; None if not inside."""
    return next((n for n, m in model.named_modules() if m is target), None)


def language_model(model: nn.Module) -> tuple[str, nn.Module]:
    """(dotted name, module) of the text decoder inside ``model``: where the decoder layers are looked for.

    A multimodal wrapper (Gemma 3 from 4B up loads as ``Gemma3ForConditionalGeneration``) holds a vision tower
    beside its language model, whose encoder layers may come first in the module tree and be as many as the text
    layers; hooks there never see text. So the language model is found first, from the model's own answer
    (``get_decoder()``, which multimodal wrappers answer with their language model), else a ``language_model``
    submodule, and only where the config has no separate text config the whole model. Plain causal LMs answer
    ``get_decoder()`` with their base model (or themselves), which holds the layers as before."""
    cfg = getattr(model, "config", None)
    multimodal = cfg is not None and getattr(cfg, "get_text_config", lambda: cfg)() is not cfg
    candidates: list[nn.Module] = []
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        try:
            dec = get_decoder()
        except Exception:  # a model with no rule of its own for it: look in the tree instead
            dec = None
        if isinstance(dec, nn.Module):
            candidates.append(dec)
    candidates += [m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] == "language_model" and isinstance(m, nn.Module)]
    for cand in candidates:
        name = _qualified_name(model, cand)
        if name is not None and (cand is not model or not multimodal):
            return name, cand
    if multimodal:
        raise FVError(f"{type(model).__name__} holds more than a language model (its config has a separate text config), "
                      "and fv found no language model in it (get_decoder() or a language_model submodule); fv needs its "
                      "text decoder's layers, never a vision tower's.")
    return "", model


def find_decoder_layers(model: nn.Module, n_layers: int) -> tuple[list[str], list[nn.Module]]:
    """The first ModuleList of the language model (``language_model``) whose length is the configured number of
    text layers; names are dotted paths from ``model``."""
    root_name, root = language_model(model)
    roots = [(root_name, root)]
    cfg = getattr(model, "config", None)
    if root is not model and (cfg is None or getattr(cfg, "get_text_config", lambda: cfg)() is cfg):
        roots.append(("", model))  # a text-only model whose get_decoder() answer holds no layer list: the whole tree
    for prefix, r in roots:
        for name, mod in r.named_modules():
            if isinstance(mod, nn.ModuleList) and len(mod) == n_layers:
                full = ".".join(p for p in (prefix, name) if p)
                return [f"{full}.{i}" for i in range(n_layers)], list(mod)
    raise FVError(f"found no list of {n_layers} decoder layers in {type(model).__name__}"
                  f"{f' (its language model {root_name})' if root_name else ''}; fv supports decoder-only transformers.")


def find_attention_output(layer: nn.Module, n_heads: int, head_dim: int, d_model: int) -> tuple[str, nn.Module, nn.Module]:
    """The attention block is the first child holding linear maps (``nn.Linear`` or GPT-2's ``Conv1D``); its
    output projection is its last linear one mapping ``n_heads * head_dim`` features to the model width."""
    for cname, child in layer.named_children():
        linears = [(n, m, f) for n, m in child.named_modules() if (f := _features(m)) is not None]
        if len(linears) < 2:
            continue
        for n, m, f in reversed(linears):
            if f == (n_heads * head_dim, d_model):
                return f"{cname}.{n}", m, child
        break
    raise FVError(
        f"found no attention output projection ({n_heads}x{head_dim} -> {d_model}) in {type(layer).__name__}; "
        "fv needs a layer whose first block with linear maps is attention."
    )


def inspect_model(model: nn.Module) -> ModelInfo:
    cfg = _cfg(model)
    n_layers = int(cfg.num_hidden_layers)
    n_heads = int(cfg.num_attention_heads)
    d_model = int(cfg.hidden_size)
    head_dim = int(getattr(cfg, "head_dim", None) or d_model // n_heads)
    layer_names, layers = find_decoder_layers(model, n_layers)
    out_names, outs, attns = [], [], []
    for lname, layer in zip(layer_names, layers):
        sub, mod, attn = find_attention_output(layer, n_heads, head_dim, d_model)
        out_names.append(f"{lname}.{sub}")
        outs.append(mod)
        attns.append(attn)
    model_type = str(getattr(cfg, "model_type", "") or "")
    return ModelInfo(n_layers, n_heads, head_dim, d_model, layer_names, out_names, layers, outs, attns,
                     model_type=model_type, projection=projection_op(outs[0], model_type))
