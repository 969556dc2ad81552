"""The provenance every JSON meta records (docs/reference.md, "Artifacts"): versions, device, dtype, model, trials, parameters, time."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from typing import Any

import fv


def run_meta(lm: Any = None, trials: Any = None, params: dict | None = None, **extra: Any) -> dict:
    import torch
    import transformers

    meta: dict = {
        "fv_version": fv.__version__, "torch_version": torch.__version__, "transformers_version": transformers.__version__,
        "python_version": platform.python_version(), "time": now_iso(),
    }
    if lm is not None:
        meta.update({"device": lm.device, "dtype": str(lm.dtype).replace("torch.", ""), "model_path": str(lm.path),
                     "model_name": lm.name, "model_config_sha256_16": lm.config_hash,
                     "n_layers": lm.info.n_layers, "n_heads": lm.info.n_heads, "head_dim": lm.info.head_dim,
                     "d_model": lm.info.d_model, "tokenizer_prepends_bos": lm.prepend_bos,
                     "model_type": lm.info.model_type, "projection_recompute": lm.info.projection,
                     "loading_rule": getattr(lm, "loading_rule", ""), "attn_implementation": getattr(lm, "attn_implementation", "")})
    if trials is not None:
        meta.update({"fixed_trials_id": trials.id, "fixed_trials_path": str(trials.path), "fixed_trials_sha256": trials.sha256,
                     "seed": trials.meta.get("seed")})
    if params:
        meta["parameters"] = params
    meta.update(extra)
    return meta


def now_iso() -> str:
    """UTC time of the run; ``SOURCE_DATE_EPOCH`` pins it, so two runs can be compared byte for byte."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    t = _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc) if epoch else _dt.datetime.now(_dt.timezone.utc)
    return t.isoformat(timespec="seconds")
