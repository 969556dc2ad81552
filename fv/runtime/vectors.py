"""The function vector (its heads: fv.runtime.top_heads).

The FV is the sum, over those heads, of the
attention output projection applied to a vector holding only that head's mean activation at the last slot.
The projection module itself is called, as the reference calls it, so a biased projection (GPT-2's ``Conv1D``,
GPT-NeoX's ``dense``) adds its bias once per top head.
``fv_by_layer`` keeps each layer's share of that sum, so injection can be studied per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fv.model.tree import ModelInfo
from fv.runtime.top_heads import Head


@dataclass
class FunctionVector:
    vector: torch.Tensor  # (1, d_model) in the model's dtype
    by_layer: torch.Tensor  # (layers, d_model) float32: each layer's summed top-head contribution
    heads: list[Head]


def function_vector(mean_acts: torch.Tensor, heads: list[Head], info: ModelInfo) -> FunctionVector:
    """The FV: the summed output-projection of each top head's last-slot mean activation, with each layer's share.

    ``mean_acts`` is ``(layers, heads, slots, head_dim)``; the vector is ``(1, d_model)`` in the model's dtype and
    ``by_layer`` ``(layers, d_model)`` float32. A biased projection adds its bias once per head.
    """
    width = info.n_heads * info.head_dim
    fv = torch.zeros((1, 1, info.d_model)).to(info.device)
    by_layer = torch.zeros(info.n_layers, info.d_model)
    for layer, head, _ in heads:
        x = torch.zeros(width)
        x[head * info.head_dim : (head + 1) * info.head_dim] = mean_acts[layer, head, -1]
        d_out = info.attn_out[layer](x.reshape(1, 1, width).to(info.device).to(info.dtype))
        fv += d_out
        by_layer[layer] += d_out.reshape(-1).to("cpu", torch.float32)
    fv = fv.to(info.dtype).reshape(1, info.d_model)
    return FunctionVector(vector=fv, by_layer=by_layer, heads=heads)
