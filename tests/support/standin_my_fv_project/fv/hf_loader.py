"""A Hugging Face model and tokenizer, unquantized."""

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_hf_model_and_tokenizer(model_name, model_spec, device, dtype, quant, device_map, trust_remote_code=False):
    """``(model, tokenizer, diagnostics)``; ``dtype`` one of fp32, fp16, bf16 (None: fp32)."""
    if quant not in (None, "none"):
        raise ValueError(f"this stand-in loads unquantized models only, not quant={quant!r}")
    dtype = dtype or "fp32"
    tokenizer = AutoTokenizer.from_pretrained(model_name, trust_remote_code=trust_remote_code)
    # the dtype keyword as the installed release spells it (``torch_dtype`` before transformers 4.56)
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    model = AutoModelForCausalLM.from_pretrained(model_name, device_map=device_map, trust_remote_code=trust_remote_code,
                                                 **{key: DTYPES[dtype]})
    if device_map is None and device:
        model.to(device)
    return model, tokenizer, {"model_name": model_name, "model_spec": model_spec, "resolved_dtype": dtype,
                              "resolved_quant": "none", "resolved_device_map": device_map}
