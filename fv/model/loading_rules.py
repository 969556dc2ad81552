"""How the reference's loader would load a model: weight dtype, quantization and attention implementation.

fv loads a model the way the reference does by default, so that "fv equals the reference" holds for the
pipeline users run, not only for a model object fv built. The reference picks its branch by substrings of the
model name; fv picks the family from ``config.model_type`` (a structural fact) and uses the name only where
the reference's rule itself is about the name (Llama's size words), reading the same string the reference's
loader is handed (the resolved folder path). The table is written out in docs/loading.md. fv's tiny models have
no rule of their own: they follow the reference's rule like any other folder (``tiny-llama`` and
``tiny-llama3tok`` are stored in folders named ``*-8b-rule-*`` so that it gives them float32, as it gives
Llama-3.1-8B).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fv.errors import FVError
from fv.model.dtypes import DTYPES, dtype_name


@dataclass(frozen=True)
class LoadingRule:
    """What to pass to ``from_pretrained``; ``dtype`` None means none (the checkpoint's own dtype), ``attn``
    None means the transformers default (sdpa where the model has it)."""

    family: str
    dtype: torch.dtype | None
    attn: str | None
    quantization: str | None
    source: str  # in words, for logs, meta and reports
    # the loader's low_cpu_mem_usage=True (upstream's GPT-J branch): on transformers 4.x the weights then stay mapped
    # from the file at its offsets, which a CPU matmul rounds by (fv.compat.loading_kwargs)
    low_cpu_mem: bool = False

    def describe(self) -> str:
        d = dtype_name(self.dtype) if self.dtype is not None else "the checkpoint's dtype"
        q = f", {self.quantization}" if self.quantization else ""
        return f"{self.source}: {d}{q}, attention {self.attn or 'transformers default'}"


def reference_rule(model_type: str, name: str) -> LoadingRule:
    """The reference loader's rule for a model of ``model_type`` named ``name`` (path or hub id)."""
    low = name.lower()
    if model_type == "gpt2":
        return LoadingRule("gpt2", None, None, None, "reference rule for GPT-2 (gpt2-xl)")
    if model_type == "gptj":
        return LoadingRule("gptj", None, None, None, "reference rule for GPT-J", low_cpu_mem=True)
    if model_type == "gpt_neox":
        return LoadingRule("gpt_neox", torch.float16, None, None, "reference rule for GPT-NeoX/Pythia")
    if model_type in ("gemma", "gemma2", "gemma3", "gemma3_text"):
        return LoadingRule(model_type, torch.float16, None, None, "reference rule for Gemma")
    if model_type in ("olmo", "olmo2"):
        return LoadingRule(model_type, torch.float32, None, None, "reference rule for OLMo")
    if model_type == "llama":
        if "70b" in low:
            return LoadingRule("llama", torch.float16, None, "4-bit NF4", "reference rule for Llama with '70b' in the name")
        if "7b" in low or "8b" in low:
            return LoadingRule("llama", torch.float32, None, None, "reference rule for Llama with '7b'/'8b' in the name")
        return LoadingRule("llama", torch.float16, None, None, "reference rule for other Llama sizes")
    raise FVError(f"the reference's loader supports gpt2, gptj, gpt_neox, gemma, llama and olmo models; this one is "
                  f"{model_type!r}. Give --dtype and --attn-implementation to load it anyway.")


def no_reference_rule(model_type: str) -> LoadingRule:
    """The rule for a family the reference's loader has no branch for: fv's runtime reads layers, heads and
    projections from the module tree, so it loads the model as its checkpoint says (its own dtype, the
    transformers default attention). The reference's limits bind the gate, not the runtime."""
    return LoadingRule(model_type, None, None, None,
                       f"the reference's loader has no rule for {model_type or 'this'!r} models; fv loads it as its checkpoint says")


def pick_rule(config: Any, name: str, dtype: str | None = None, attn: str | None = None) -> LoadingRule:
    """The rule ``load_model`` applies: the reference's rule for ``name`` (the string its loader would be
    handed), then the overrides.

    ``dtype`` / ``attn`` of None or ``auto`` keep the rule's choice; anything else overrides it and says so.
    """
    model_type = str(getattr(config, "model_type", "") or "")
    overridden = dtype not in (None, "", "auto") and attn not in (None, "", "auto")
    if overridden:
        rule = LoadingRule(model_type, None, None, None, "no rule")
    else:
        try:
            rule = reference_rule(model_type, name)
        except FVError:
            rule = no_reference_rule(model_type)
    low_cpu_mem = rule.low_cpu_mem  # kept through the overrides: how the weights are read, not what they compute in
    notes = []
    if dtype not in (None, "", "auto"):
        if dtype not in DTYPES:
            raise FVError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)} or auto (the reference's rule).")
        if DTYPES[dtype] != rule.dtype or rule.quantization:
            notes.append(f"--dtype {dtype}")
        rule = LoadingRule(rule.family, DTYPES[dtype], rule.attn, None, rule.source)
    if attn not in (None, "", "auto"):
        if attn != rule.attn:
            notes.append(f"--attn-implementation {attn}")
        rule = LoadingRule(rule.family, rule.dtype, attn, rule.quantization, rule.source)
    if notes:
        rule = LoadingRule(rule.family, rule.dtype, rule.attn, rule.quantization, f"{rule.source}, overridden by {' and '.join(notes)}")
    return LoadingRule(rule.family, rule.dtype, rule.attn, rule.quantization, rule.source, low_cpu_mem=low_cpu_mem)
