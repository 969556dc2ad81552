"""Loading a model and its tokenizer once, with an explicit dtype and device."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fv import compat
from fv.errors import FVError
from fv.model.loading_rules import dtype_name, pick_rule
from fv.model.resolve import display_name, resolve_model_path
from fv.model.tiny import tiny_name_of_folder
from fv.model.tokenizers import load_tokenizer, tokenizer_prepends_bos
from fv.model.tree import ModelInfo, inspect_model


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
    spec: str = ""  # the model as the user named it (hub id, folder, snapshot path, tiny name); handed to the reference

    @property
    def name(self) -> str:
        """A tiny model's name for its cache folder (``<stem>-<fingerprint>``), a cache snapshot's repository name,
        else the folder name."""
        return tiny_name_of_folder(self.path.name) or display_name(self.path)

    @property
    def config_hash(self) -> str:
        return hashlib.sha256((self.path / "config.json").read_bytes()).hexdigest()[:16]


QUANT_EXTRA = "pip install 'fv[quant]' (bitsandbytes and accelerate; on the CPU bitsandbytes>=0.50)"


def quant_config_of(qc: dict) -> Any:
    """A ``BitsAndBytesConfig`` from a quantization config's dict (as the reference's loaded model records it);
    without bitsandbytes and accelerate, one line naming the extra."""
    try:
        import accelerate  # noqa: F401
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise FVError(f"this model loads in 4-bit (NF4) by the reference's rule, which needs bitsandbytes and "
                      f"accelerate ({exc}); {QUANT_EXTRA}") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig.from_dict(dict(qc), return_unused_kwargs=False)


def causal_lm_class(config: Any) -> Any:
    """The auto class that loads ``config``'s checkpoint with its language-model head: ``AutoModelForCausalLM``, or,
    for a multimodal wrapper that release does not map there (Gemma 3 from 4B up, ``Gemma3ForConditionalGeneration``,
    on transformers releases before 5.x), ``AutoModelForImageTextToText``, whose model runs text alone as well.
    transformers 5.x maps a Gemma 3 multimodal config to ``Gemma3ForConditionalGeneration`` from
    ``AutoModelForCausalLM`` itself; either way fv finds its decoder layers inside the language model
    (``fv.model.tree.language_model``)."""
    import transformers
    from transformers import AutoModelForCausalLM

    if type(config) in AutoModelForCausalLM._model_mapping:
        return AutoModelForCausalLM
    multimodal = getattr(config, "get_text_config", lambda: config)() is not config
    image_text = getattr(transformers, "AutoModelForImageTextToText", None)
    if multimodal and image_text is not None and type(config) in image_text._model_mapping:
        return image_text
    return AutoModelForCausalLM  # its own error names the configuration it cannot load


def load_model(model: str | None, device: str | None = None, dtype: str | None = None, worker: int | None = None,
               attn_implementation: str | None = None, produced: dict | None = None) -> LoadedModel:
    """Load a model as the reference's loader would (``fv.model.loading_rules``) unless ``dtype`` or
    ``attn_implementation`` (None or ``auto``: the rule's) override it; the rule applied is recorded."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = resolve_model_path(model)
    dev = pick_device(device, worker)
    tok = load_tokenizer(path)
    if produced is not None and produced.get("tokenizer_class") and type(tok).__name__ != produced["tokenizer_class"]:
        # the reference's loader chose its tokenizer class (upstream's 70b branch: LlamaTokenizer); fv follows it
        import transformers

        cls = getattr(transformers, produced["tokenizer_class"], None)
        if cls is None:
            raise FVError(f"the reference's loader gave {path} a {produced['tokenizer_class']} tokenizer, which this "
                          "transformers release does not have; install the release the reference runs with.")
        tok = cls.from_pretrained(str(path))
    try:
        config = AutoConfig.from_pretrained(str(path))
    except Exception as exc:
        raise FVError(f"cannot read the model config in {path}: {exc}") from exc
    # the reference's loader is handed the resolved folder (fv's end-to-end gate does so), so its size words count
    rule = pick_rule(config, str(path), dtype, attn_implementation)
    kwargs = {}
    rule_text = None
    auto = dtype in (None, "", "auto") and attn_implementation in (None, "", "auto")
    if produced is not None and auto and produced.get("quantization_config"):
        # first in precedence: what the loader of the src in use produced, read in its process
        kwargs["quantization_config"] = quant_config_of(produced["quantization_config"])
        rule_text = (f"what the reference's loader produced: 4-bit {produced['quantization_config'].get('bnb_4bit_quant_type')}, "
                     f"{produced['dtype']} non-quantized parameters, attention {produced['attn_implementation']}")
    elif produced is not None and auto and produced.get("dtype") and (rule.dtype is None or dtype_name(rule.dtype) != produced["dtype"]):
        # also for a family upstream's table lacks (a fork's branch loaded it): what that loader produced comes first
        kwargs["dtype"] = getattr(torch, produced["dtype"])
        rule_text = f"what the reference's loader produced: {produced['dtype']}, attention {produced['attn_implementation']}"
    elif rule.quantization:
        # upstream's table, no reference given: its 70b rule (NF4, double quantization, compute float16, no dtype)
        kwargs["quantization_config"] = quant_config_of({"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                                          "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "float16"})
        kwargs["trust_remote_code"] = True
    else:
        if rule.dtype is not None:
            kwargs["dtype"] = rule.dtype
        if rule.attn is not None:
            kwargs["attn_implementation"] = rule.attn
    if "quantization_config" in kwargs and dev == "cpu" and not compat.cpu_4bit()[0]:
        raise FVError(f"cannot load {path} in 4-bit on the CPU: {compat.cpu_4bit()[1]}; give --device cuda, or --dtype "
                      "to load it unquantized.")
    if rule.low_cpu_mem and "quantization_config" not in kwargs:
        kwargs["low_cpu_mem_usage"] = True  # as the reference's loader (fv.compat.loading_kwargs: where it changes the numbers)
    compat.check_attn_implementation(kwargs.get("attn_implementation"))
    try:
        # the dtype under the installed release's keyword (torch_dtype before transformers 4.56)
        m = causal_lm_class(config).from_pretrained(str(path), **compat.loading_kwargs(kwargs))
    except Exception as exc:
        raise FVError(f"cannot load the model in {path} ({rule.describe()}): {exc}") from exc
    m = (m if "quantization_config" in kwargs and dev == "cpu" else m.to(dev)).eval()
    torch.set_grad_enabled(False)
    attn = str(getattr(m.config, "_attn_implementation", None) or "")
    return LoadedModel(path=path, model=m, tokenizer=tok, info=inspect_model(m), device=dev, dtype=m.dtype,
                       prepend_bos=tokenizer_prepends_bos(tok), loading_rule=rule_text or rule.describe(), attn_implementation=attn,
                       spec=str(model) if model else "")


def light_model(model: str, dtype: str | None) -> tuple[Any, str, bool, dict]:
    """Tokenizer, model name, BOS rule and the weight-free part of the q identity of ``model`` (a name or folder)
    computing in ``dtype``, without loading weights (the driver of a job array may run on a login node)."""
    from fv.model.dtypes import pick_dtype

    path = resolve_model_path(model)
    tok = load_tokenizer(path)
    dt = pick_dtype(dtype)
    lm = LoadedModel(path=path, model=None, tokenizer=tok, info=None, device="meta", dtype=dt, prepend_bos=tokenizer_prepends_bos(tok))
    ident = {"model_config_sha256_16": hashlib.sha256((path / "config.json").read_bytes()).hexdigest()[:16],
             "model_name": lm.name, "dtype": str(dt).replace("torch.", "")}
    return tok, lm.name, lm.prepend_bos, ident
