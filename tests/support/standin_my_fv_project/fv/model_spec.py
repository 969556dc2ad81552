"""Model families by name: where the blocks, attention and its output projection are, and whether the tokenizer adds BOS."""

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class ModelSpec:
    name: str
    prepend_bos: bool
    blocks_path: str
    attn_path_in_block: str
    out_proj_path_in_attn: str
    n_layers: Optional[int] = None


MODEL_SPECS = {s.name: s for s in (
    ModelSpec("gpt2", False, "transformer.h", "attn", "c_proj"),
    ModelSpec("gptj", False, "transformer.h", "attn", "out_proj"),
    ModelSpec("neox", False, "gpt_neox.layers", "attention", "dense"),
    ModelSpec("llama", True, "model.layers", "self_attn", "o_proj"),
    ModelSpec("gemma", True, "model.layers", "self_attn", "o_proj"),
    ModelSpec("olmo", False, "model.layers", "self_attn", "o_proj"),
)}
NEEDLES = (("gpt-j", "gptj"), ("gpt-neox", "neox"), ("pythia", "neox"), ("gpt2", "gpt2"), ("gemma", "gemma"),
           ("llama", "llama"), ("olmo", "olmo"))


def get_model_spec(name_or_id: str) -> ModelSpec:
    key = name_or_id.strip()
    if key in MODEL_SPECS:
        return MODEL_SPECS[key]
    for needle, name in NEEDLES:
        if needle in key.lower():
            return MODEL_SPECS[name]
    raise ValueError(f"Unsupported model spec: '{name_or_id}'")
