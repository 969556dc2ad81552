"""Weight dtypes by the names users type."""

from __future__ import annotations

import torch

from fv.errors import FVError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def pick_dtype(dtype: str | None) -> torch.dtype:
    """``None``/``auto`` is float32; anything else must be a name in ``DTYPES``."""
    if dtype in (None, "", "auto"):
        return torch.float32
    if dtype not in DTYPES:
        raise FVError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}.")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
