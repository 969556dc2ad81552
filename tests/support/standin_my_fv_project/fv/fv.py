"""The function vector: the heads with the largest mean indirect effect, their last-slot means through ``o_proj``, summed."""

import torch

from .model_spec import get_model_spec


def compute_function_vector(mean_activations, indirect_effect, model, model_config, n_top_heads=10, token_class_idx=-1):
    """``(fv (1, d_model) in the model's dtype, [(layer, head, trial-mean effect rounded to 4 decimals)])``."""
    if indirect_effect.dim() == 3 and token_class_idx == -1:
        effect = indirect_effect.mean(dim=0)
    else:
        effect = indirect_effect[:, :, :, token_class_idx].mean(dim=0)
    values, flat = torch.topk(effect.reshape(-1), k=n_top_heads, largest=True)
    n_heads = effect.shape[1]
    top_heads = [(int(i) // n_heads, int(i) % n_heads, round(v.item(), 4)) for v, i in zip(values, flat)]

    d_model = int(model_config["resid_dim"])
    head_dim = d_model // int(model_config["n_heads"])
    spec = get_model_spec(str(model_config["name_or_path"]))
    function_vector = torch.zeros((1, 1, d_model)).to(model.device)
    for layer, head, _score in top_heads:
        out_proj = model.get_submodule(f"{spec.blocks_path}.{layer}.{spec.attn_path_in_block}.{spec.out_proj_path_in_attn}")
        x = torch.zeros(d_model)
        x[head * head_dim:(head + 1) * head_dim] = mean_activations[layer, head, -1]
        function_vector += out_proj(x.reshape(1, 1, d_model).to(model.device).to(model.dtype))
    return function_vector.to(model.dtype).reshape(1, d_model), top_heads
