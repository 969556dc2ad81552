"""A Hugging Face model and tokenizer, unquantized."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_hf_model_and_tokenizer(model_name, model_spec, device, dtype, quant, device_map, trust_remote_code=False):
    """``(model, tokenizer, diagnostics)``; ``dtype`` one of fp32, fp16, bf16 (None: fp32)."""
    if quant not in (None, "none"):
        raise ValueError(f"this stand-in loads unquantized models only, not quant={quant!r}")
    dtype = dtype or "fp32"
    tokenizer = AutoTokenizer.from_pretrained(model_name, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(model_name, dtype=DTYPES[dtype], device_map=device_map,
                                                 trust_remote_code=trust_remote_code)
    if device_map is None and device:
        model.to(device)
    return model, tokenizer, {"model_name": model_name, "model_spec": model_spec, "resolved_dtype": dtype,
                              "resolved_quant": "none", "resolved_device_map": device_map}
