"""A model's blocks and head sizes."""


def resolve_blocks(model, spec, logger=None):
    """The transformer blocks, as a list, at ``spec.blocks_path``."""
    blocks = list(model.get_submodule(spec.blocks_path))
    if spec.n_layers is not None and len(blocks) != spec.n_layers:
        raise ValueError(f"spec '{spec.name}' expects {spec.n_layers} blocks, the model has {len(blocks)}")
    return blocks


def infer_head_dims(model, spec_name: str = "gpt2"):
    """``{"hidden_size", "n_heads", "head_dim"}`` from the model's config."""
    cfg = model.config
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    n_heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    head_dim = getattr(cfg, "head_dim", None) or hidden // n_heads
    if hidden != n_heads * head_dim:
        raise ValueError("hidden_size does not match n_heads * head_dim")
    return {"hidden_size": hidden, "n_heads": n_heads, "head_dim": head_dim}
