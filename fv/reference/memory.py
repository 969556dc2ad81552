"""Memory before loading: the own mode holds two copies of the model (fv's and the reference's), the shared mode one.

Sizes come from the model's config, its parameters counted on the meta device (no weights read): float32 4 bytes
a parameter, float16/bfloat16 2; 4-bit NF4 half a byte for the decoder layers' linear weights plus about 1/64 for
their quantization constants (double quantization), the embeddings and the output head kept in the checkpoint's
dtype. For example a Llama-3.1-8B takes about 32 GB in float32 and about 5.5 GB in NF4.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fv import compat

GB = 1e9
NF4_BYTES = 0.5 + 0.5 / 64 * 1.02  # packed 4-bit values + one fp8 absmax per 64 (double quantization) and its constants


def model_bytes(folder: Path, dtype_bytes: float, four_bit: bool) -> float:
    """Estimated bytes of the model in ``folder`` loaded with ``dtype_bytes`` a parameter (or NF4)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(folder)))
    total = 0.0
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Linear) and four_bit and "lm_head" not in name:
            total += mod.weight.numel() * NF4_BYTES + (mod.bias.numel() * dtype_bytes if mod.bias is not None else 0)
    seen = 0 if not four_bit else sum(p.numel() for n, mod in m.named_modules()
                                      if isinstance(mod, torch.nn.Linear) and "lm_head" not in n for p in mod.parameters())
    total += (sum(p.numel() for p in m.parameters()) - seen) * dtype_bytes
    return total


def free_bytes(device: str) -> float:
    """Free memory on ``device``: the GPU's free memory, or the host's MemAvailable for the CPU."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return float(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def memory_plan(folder: Path, name: str, device: str, mode: str) -> tuple[bool, str]:
    """Whether ``mode`` (own: two copies; shared: one) fits in the free memory of ``device``, and the estimate in
    one line, made before anything loads, with upstream's loading rule for the dtype."""
    from transformers import AutoConfig

    from fv.model.loading_rules import pick_rule

    rule = pick_rule(AutoConfig.from_pretrained(str(folder)), str(folder))
    four_bit = bool(rule.quantization)
    dtype = rule.dtype
    if dtype is None:
        cfg = AutoConfig.from_pretrained(str(folder))
        dtype = getattr(torch, str(compat.config_dtype(cfg) or "float32").replace("torch.", ""))
    one = model_bytes(folder, torch.empty(0, dtype=dtype).element_size(), four_bit)
    free = free_bytes(device)
    copies = 2 if mode == "own" else 1
    need = one * copies
    what = f"{'NF4 4-bit' if four_bit else str(dtype).replace('torch.', '')}"
    fits = need <= free
    text = (f"memory for {name} ({what}): about {one / GB:.1f} GB a copy; the {mode} mode holds {copies} "
            f"({need / GB:.1f} GB), {device} has {free / GB:.1f} GB free: "
            + ("it fits." if fits else ("it does not fit; --src-model shared holds one copy" +
                                        (" and fits." if one <= free else ", which does not fit either.")
                                        if mode == "own" else "it does not fit.")))
    return fits, text
