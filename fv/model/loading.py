"""Loading a model and its tokenizer once, with an explicit dtype and device."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fv.errors import FVError
from fv.model.tree import ModelInfo, inspect_model
from fv.model.loading_rules import pick_rule
from fv.model.resolve import display_name, resolve_model_path
from fv.model.tiny import tiny_name_of_folder
from fv.model.tokenizers import load_tokenizer, tokenizer_prepends_bos



def pick_device(device: str | None, worker: int | None = None) -> str:
    """``auto`` is cuda when there is one. ``worker`` (an xdist or relation worker number) spreads workers over
    the GPUs when there are several: worker i takes cuda:(i mod count)."""
    if device in (None, "", "auto", "cuda") and torch.cuda.is_available() and worker is not None and torch.cuda.device_count() > 1:
        return f"cuda:{worker % torch.cuda.device_count()}"
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FVError(f"--device {device} asked, but torch sees no CUDA device. Use --device cpu or auto.")
    return device




@dataclass
class LoadedModel:
    """A model with everything the stages ask of it."""

    path: Path
    model: Any
    tokenizer: Any
    info: ModelInfo
    device: str
    dtype: torch.dtype
    prepend_bos: bool
    loading_rule: str = ""  # which rule chose the dtype and attention implementation (fv.model.loading_rules)
    attn_implementation: str = ""  # what transformers actually set up
    reference_config: dict | None = None  # MODEL_CONFIG from the reference's own loader, when it loaded this model

    @property
    def name(self) -> str:
        """A tiny model's name for its cache folder (``<stem>-<fingerprint>``), a cache snapshot's repository name,
        else the folder name."""
        return tiny_name_of_folder(self.path.name) or display_name(self.path)

    @property
    def config_hash(self) -> str:
        return hashlib.sha256((self.path / "config.json").read_bytes()).hexdigest()[:16]


def load_model(model: str | None, device: str | None = None, dtype: str | None = None, worker: int | None = None,
               attn_implementation: str | None = None) -> LoadedModel:
    """Load a model as the reference's loader would (``fv.model.loading_rules``) unless ``dtype`` or
    ``attn_implementation`` (None or ``auto``: the rule's) override it; the rule applied is recorded."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = resolve_model_path(model)
    dev = pick_device(device, worker)
    tok = load_tokenizer(path)
    try:
        config = AutoConfig.from_pretrained(str(path))
    except Exception as exc:
        raise FVError(f"cannot read the model config in {path}: {exc}") from exc
    # the reference's loader is handed the resolved folder (fv's end-to-end gate does so), so its size words count
    rule = pick_rule(config, str(path), dtype, attn_implementation)
    if rule.quantization:
        raise FVError(f"{rule.describe()}: fv does not load quantized models. Pass --dtype float16 (or bfloat16) to load "
                      "it unquantized; results then differ from the reference's.")
    kwargs = {}
    if rule.dtype is not None:
        kwargs["dtype"] = rule.dtype
    if rule.attn is not None:
        kwargs["attn_implementation"] = rule.attn
    try:
        m = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except Exception as exc:
        raise FVError(f"cannot load the model in {path} ({rule.describe()}): {exc}") from exc
    m = m.to(dev).eval()
    torch.set_grad_enabled(False)
    attn = str(getattr(m.config, "_attn_implementation", None) or "")
    return LoadedModel(path=path, model=m, tokenizer=tok, info=inspect_model(m), device=dev, dtype=m.dtype,
                       prepend_bos=tokenizer_prepends_bos(tok), loading_rule=rule.describe(), attn_implementation=attn)
