"""Where things are in a decoder model, found by looking at the module tree, never at the model's name.

The runtime needs three things: the list of decoder layers (to add a vector to a layer's output), each
layer's attention output projection (its input, split by head, is what a head writes), and the head sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fv.errors import FVError


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

    @property
    def device(self) -> torch.device:
        return self.attn_out[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.attn_out[0].weight.dtype

    def check_edit_layer(self, edit_layer: int) -> None:
        if not 0 <= edit_layer < self.n_layers:
            raise FVError(f"--edit-layer {edit_layer} is outside this model: it has {self.n_layers} layers (0..{self.n_layers - 1}). Pick a layer in that range.")


def _cfg(model: nn.Module) -> Any:
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise FVError("the model has no .config; fv needs a Hugging Face causal LM.")
    return getattr(cfg, "get_text_config", lambda: cfg)()


def find_decoder_layers(model: nn.Module, n_layers: int) -> tuple[list[str], list[nn.Module]]:
    """The first ModuleList whose length is the configured number of layers."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n_layers:
            return [f"{name}.{i}" for i in range(n_layers)], list(mod)
    raise FVError(f"found no list of {n_layers} decoder layers in {type(model).__name__}; fv supports decoder-only transformers.")


def find_attention_output(layer: nn.Module, n_heads: int, head_dim: int, d_model: int) -> tuple[str, nn.Module, nn.Module]:
    """The attention block is the first child holding linear maps; its output projection is its last linear
    one mapping ``n_heads * head_dim`` features to the model width."""
    for cname, child in layer.named_children():
        linears = [(n, m) for n, m in child.named_modules() if isinstance(m, nn.Linear)]
        if len(linears) < 2:
            continue
        for n, m in reversed(linears):
            if m.in_features == n_heads * head_dim and m.out_features == d_model:
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
    return ModelInfo(n_layers, n_heads, head_dim, d_model, layer_names, out_names, layers, outs, attns)
