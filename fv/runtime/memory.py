"""The memory budget of a forward pass, shared by the stages that size their passes (indirect effects, evaluation,
mean activations): the memory free on a device, the logits bound, and the model's sizes a row's need is made of.

A pass holds as many rows as a share of the free memory over one row's need allows, and never more rows than
``LOGITS_BUDGET`` of float32 logits, so the peak does not grow with the number of trials.
"""

from __future__ import annotations

from typing import Any

import torch

# float32 logits (with their softmax and the model's own copy) one pass may hold, whatever the number of trials: the
# unembedding of a 128k vocabulary is 0.5 MiB per row, so without a bound a pass over 8 trials' (layer, head) rows
# holds a gigabyte of logits, and the peak grows with the trials batched together
LOGITS_BUDGET = 256 << 20
FALLBACK_RAM = 2 << 30  # bytes assumed free where /proc/meminfo cannot be read


def available_ram() -> int:
    """Bytes of RAM available (``MemAvailable`` of /proc/meminfo on Linux), else a conservative 2 GiB."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return FALLBACK_RAM


def free_bytes(device: Any) -> int:
    """Bytes free for a pass on ``device``: the CUDA allocator's free memory on a GPU, the available RAM otherwise."""
    dev = torch.device(device)
    return torch.cuda.mem_get_info(dev)[0] if dev.type == "cuda" else available_ram()


def logits_rows(vocab: int, positions: int = 1, budget: int = LOGITS_BUDGET) -> int:
    """Rows of ``positions`` positions each whose float32 logits, softmax and the model's copy fit ``budget`` bytes."""
    return int(budget // max(1, 3 * 4 * int(vocab) * max(1, positions))) if vocab else 1 << 30


def model_sizes(model: Any, info: Any) -> tuple[int, int, int]:
    """``(bytes per element of the compute dtype, vocabulary size, MLP width)`` of a loaded model (its text model's
    config for a multimodal one; the MLP width defaults to 4 x d_model where the config has none)."""
    cfg = getattr(model.config, "get_text_config", lambda: model.config)()
    elem = torch.empty(0, dtype=info.dtype).element_size()
    vocab = int(getattr(cfg, "vocab_size", 0) or 0)
    inter = int(getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * info.d_model)
    return elem, vocab, inter
