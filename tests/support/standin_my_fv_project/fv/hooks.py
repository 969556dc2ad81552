"""Where a layer's head outputs enter the model: the attention output projection."""

from .model_spec import get_model_spec


def get_out_proj_pre_hook_target(model, layer_idx: int, spec_name: str = "gpt2", logger=None):
    """``(module, dotted path)`` of layer ``layer_idx``'s attention output projection."""
    spec = get_model_spec(spec_name)
    path = f"{spec.blocks_path}.{layer_idx}.{spec.attn_path_in_block}.{spec.out_proj_path_in_attn}"
    return model.get_submodule(path), path
