"""The one place for what differs between the library releases fv supports.

fv runs from transformers 4.44.2 (the user's pinned 70B environment: tokenizers 0.19, accelerate 0.33,
bitsandbytes 0.42) up to the newest release (5.x). Every difference fv meets is answered here, by what the
installed release has (an attribute, a signature) where that can be seen, else by its version:

- **the dtype keyword** of ``from_pretrained``: ``dtype`` from transformers 4.56, ``torch_dtype`` before. 4.44.2
  takes an unknown ``dtype=`` as a config attribute and loads float32 without a word (``dtype_kwargs``,
  ``loading_kwargs``); a loaded config's dtype is ``dtype`` or ``torch_dtype`` (``config_dtype``).
- **mapped weights**: 4.x's ``low_cpu_mem_usage=True`` (upstream's GPT-J loader passes it) leaves the weights
  mapped from the safetensors file at its offsets, and a CPU matmul over a weight that is not 64-byte aligned
  rounds 1 ulp off one over a copy; 5.x ignores the argument. fv loads as the reference does (``loading_kwargs``)
  and writes its tiny models' tensors 64-byte aligned (``fv.model.tiny.align_safetensors``).
- **attention implementation names**: 4.44.2 knows ``eager``, ``sdpa`` and ``flash_attention_2``; later releases
  add ``flex_attention``, ``flash_attention_3`` and kernels. A name the installed release lacks stops in one line
  (``check_attn_implementation``).
- **key/value caches**: ``DynamicCache`` keeps per-layer objects (``cache.layers[i].keys``/``.values``) in recent
  releases (and takes ``config=``), two lists (``key_cache``/``value_cache``) in 4.44 (``new_dynamic_cache``,
  ``cache_kv``, ``set_cache_kv``). 4.44.2's GPT-2, GPT-J and GPT-NeoX keep tuples and take no ``Cache`` object
  (``no_cache_object``): fast mode falls back to exact mode there, with its warning.
- **logits**: before 4.46, Llama, Gemma, OLMo, Qwen2, Mistral, Phi-3, GPT-J (...) hand back float32 logits
  (``logits.float()``); from 4.46 the model's dtype. In half precision every probability differs in its last
  bits across that line, enough to trade top heads the indirect effects cannot tell apart: goldens made on one
  side of it skip their FV and injection on the other where the heads traded (``logits_release_difference``,
  ``fv.parity.golden_check``); the live reference on the same release is bit-exact.
- **decoder layer outputs**: a tuple ``(hidden, ...)`` on 4.x, the hidden-state tensor alone on 5.x
  (``layer_hidden``, ``with_layer_hidden``); the reference's FV injection edits tuples only, so it is live on 4.x
  without ``--src-compat`` (found by its liveness probe, ``fv.reference.adapter``).
- **config keys**: 5.x folds ``rope_theta``/``rope_scaling`` (and GPT-NeoX's ``rotary_emb_base``/``rotary_pct``,
  Gemma 3's ``rope_local_base_freq``) into ``rope_parameters`` and writes only that; 4.x reads only the old keys
  and would compute with its default base (10000) from a 5.x file. Config files fv writes carry both spellings
  (``portable_config``; Gemma's ``hidden_activation`` too), and the model identity reads every release's
  spelling as one (``release_neutral_config``: rope keys, ``torch_dtype``, defaults 5.x writes and 4.x leaves
  out, ``layer_types`` 5.x writes and 4.x derives).
- **tokenizer files**: tokenizers from 0.20 write BPE merges as pairs (``["a", "b"]``), which 0.19 cannot parse
  ("data did not match any variant of untagged enum ModelWrapper"); both read ``"a b"`` strings
  (``portable_tokenizer_json``). transformers 5.x saves ``tokenizer_class: TokenizersBackend``, a class 4.x does
  not have; 4.x's ``PreTrainedTokenizerFast`` returns ``token_type_ids`` unless ``model_input_names`` says
  otherwise, which ``LlamaForCausalLM.forward`` refuses (``portable_tokenizer_config``). ``check_tokenizer_folder``
  refuses a folder the installed releases cannot read, in one line naming ``python -m fv.compat tokenizer DIR``,
  which rewrites it in the format both read. A SentencePiece config's ``add_prefix_space`` makes 4.x rebuild the
  fast tokenizer through protobuf (``portable_sentencepiece_config``). One known difference is left as it is:
  for a text that begins with a space, 4.44.2 reads the tiny Llama 2 tokenizer.json as written (the
  ``sentencepiece`` library's ids) and 5.x's ``LlamaTokenizer`` folds the space into the prepended mark; prompts
  never begin with a space (tests/self/runtime/test_compat.py says when that changes).
- **model classes** 4.44.2 lacks (Gemma 3, OLMo 2): ``missing_model_class`` names what is missing.
- **bitsandbytes**: 4-bit NF4 on the CPU from 0.50; 0.42 (the pinned CUDA build) runs on CUDA only
  (``cpu_4bit``).
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import sys
from pathlib import Path
from typing import Any

from packaging.version import Version

from fv.errors import FVError

TRANSFORMERS_OLDEST = "4.44.2"  # the oldest release fv supports (pyproject's lower bound)
DTYPE_KEYWORD_SINCE = Version("4.56.0")  # from_pretrained(dtype=...); torch_dtype= before (and deprecated after)
TOKENIZERS_PAIR_MERGES_SINCE = Version("0.20.0")  # reads (and writes) BPE merges as pairs
BNB_CPU_4BIT_SINCE = Version("0.50.0")  # bitsandbytes' NF4 kernels on the CPU
ATTN_BEFORE_FLEX = ("eager", "sdpa", "flash_attention_2")  # what 4.44.2's PreTrainedModel accepts
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
MODEL_INPUT_NAMES = ["input_ids", "attention_mask"]


# ---- versions ----------------------------------------------------------------------------------------------
def installed_version(dist: str) -> Version | None:
    """The installed version of distribution ``dist`` (read from its metadata: nothing is imported), or None."""
    try:
        return Version(importlib.metadata.version(dist))
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


def transformers_version() -> Version:
    """The transformers release that is imported (``PYTHONPATH`` may put another one first than pip's)."""
    import transformers

    return Version(transformers.__version__)


def tokenizers_version() -> Version:
    import tokenizers

    return Version(tokenizers.__version__)


def versions() -> dict[str, str | None]:
    """The releases of the libraries this module answers for, for reports and ``fv doctor``."""
    out: dict[str, str | None] = {}
    for mod in ("transformers", "tokenizers", "accelerate", "bitsandbytes", "safetensors"):
        if mod in sys.modules:
            out[mod] = str(getattr(sys.modules[mod], "__version__", None))
        else:
            v = installed_version(mod)
            out[mod] = str(v) if v is not None else None
    return out


# ---- loading -----------------------------------------------------------------------------------------------
def dtype_keyword() -> str:
    """``from_pretrained``'s keyword for the weights' dtype in the installed transformers."""
    return "dtype" if transformers_version() >= DTYPE_KEYWORD_SINCE else "torch_dtype"


def dtype_kwargs(dtype: Any) -> dict[str, Any]:
    """``{keyword: dtype}`` for ``from_pretrained``; empty for None (the checkpoint's own dtype)."""
    return {} if dtype is None else {dtype_keyword(): dtype}


def loading_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` for the installed release's ``from_pretrained``: a ``dtype`` (or ``torch_dtype``) under its
    keyword; ``low_cpu_mem_usage`` kept on 4.x only, where accelerate is there (4.x needs it for that path; 5.x
    ignores the argument). On 4.x that path leaves the weights mapped from the file at its offsets, and a CPU matmul
    over a weight that is not 64-byte aligned rounds differently from one over a copy: fv loads a model as the
    reference's loader does (upstream's GPT-J branch passes it), so both compute alike."""
    out = dict(kwargs)
    value = out.pop("dtype", None)
    value = out.pop("torch_dtype", value)
    out.update(dtype_kwargs(value))
    if out.pop("low_cpu_mem_usage", None) and transformers_version().major < 5 and installed_version("accelerate") is not None:
        out["low_cpu_mem_usage"] = True
    return out


def check_attn_implementation(name: str | None) -> None:
    """Stop in one line when the installed transformers does not know the attention implementation ``name``."""
    if name in (None, "", "auto") or transformers_version() >= Version("4.48.0"):
        return  # from 4.48 the model itself names what it supports, and its own error says so
    if name not in ATTN_BEFORE_FLEX:
        raise FVError(f"attention implementation {name!r} is not in transformers {transformers_version()} (it has "
                      f"{', '.join(ATTN_BEFORE_FLEX)}); pass one of those, or auto.")


class NotInThisRelease(FVError):
    """A model class (or tiny model) the installed transformers release does not have; tests skip, counted, with it."""


def missing_model_class(config_class: str) -> str | None:
    """None when the installed transformers has ``config_class`` (e.g. ``Gemma3TextConfig``), else why not in words."""
    import transformers

    if hasattr(transformers, config_class):
        return None
    return f"transformers {transformers.__version__} has no {config_class} (that model class came in a later release)"


# ---- config keys -------------------------------------------------------------------------------------------
def _legacy_rope_keys(cfg: dict) -> dict:
    """The 4.x spelling of a 5.x ``rope_parameters`` (empty where the config has none)."""
    rp = cfg.get("rope_parameters")
    if not isinstance(rp, dict) or not rp:
        return {}
    out: dict = {}
    if all(isinstance(v, dict) for v in rp.values()):  # per layer type (Gemma 3): full and sliding attention
        full, local = rp.get("full_attention") or {}, rp.get("sliding_attention") or {}
        if "rope_theta" in full:
            out["rope_theta"] = full["rope_theta"]
        if "rope_theta" in local:
            out["rope_local_base_freq"] = local["rope_theta"]
        scaling = {k: v for k, v in full.items() if k != "rope_theta"}
        out["rope_scaling"] = scaling if scaling.get("rope_type", "default") != "default" else None
        return out
    if cfg.get("model_type") == "gpt_neox":
        if "rope_theta" in rp:
            out["rotary_emb_base"] = rp["rope_theta"]
        if "partial_rotary_factor" in rp:
            out["rotary_pct"] = rp["partial_rotary_factor"]
    else:
        if "rope_theta" in rp:
            out["rope_theta"] = rp["rope_theta"]
        if "partial_rotary_factor" in rp:
            out["partial_rotary_factor"] = rp["partial_rotary_factor"]
    scaling = {k: v for k, v in rp.items() if k not in ("rope_theta", "partial_rotary_factor")}
    out["rope_scaling"] = scaling if scaling.get("rope_type", "default") != "default" else None
    return out


def portable_config(cfg: dict) -> dict:
    """A config dict as 5.x writes it, with the 4.x keys beside (``rope_theta``, ``rope_scaling``, ...): a file
    both read with the same numbers. Keys already there are kept; sub-configs (``text_config``) get theirs."""
    out = dict(cfg)
    for k, v in cfg.items():
        if isinstance(v, dict) and k.endswith("_config") and k != "quantization_config":
            out[k] = portable_config(v)
    for k, v in _legacy_rope_keys(cfg).items():
        out.setdefault(k, v)
    if cfg.get("model_type") == "gemma" and "hidden_act" in cfg:
        out.setdefault("hidden_activation", cfg["hidden_act"])  # what 4.x's Gemma runs (it warns and guesses without it)
    return out


def write_portable_config(folder: str | Path) -> None:
    """Rewrite ``folder/config.json`` (as ``save_pretrained`` wrote it) with the keys every supported release reads."""
    from fv.io import write_text

    path = Path(folder) / "config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    new = portable_config(cfg)
    if new != cfg:
        write_text(path, json.dumps(new, indent=2, sort_keys=True) + "\n")


def rope_parameters_of(cfg: dict) -> dict:
    """``cfg`` (a config dict, any release's spelling, computation keys only) with its rope keys folded into one
    ``rope_parameters`` as 5.x writes it: the 4.x keys (``rope_theta``, ``rope_scaling``, GPT-NeoX's
    ``rotary_emb_base``/``rotary_pct``, ``partial_rotary_factor``, Gemma 3's ``rope_local_base_freq``) are
    removed, what they say is kept. A value spelled both ways is the 5.x one."""
    out = dict(cfg)
    legacy = {k: out.pop(k) for k in ("rope_theta", "rope_scaling", "rotary_emb_base", "rotary_pct",
                                      "partial_rotary_factor", "rope_local_base_freq") if k in out}
    new = out.get("rope_parameters") if isinstance(out.get("rope_parameters"), dict) else None
    if new or not legacy:  # 5.x's own; 4.x keys beside it (portable_config) only echo it
        if new is not None:
            out["rope_parameters"] = _clean_rope(new)
        return out
    params = dict(legacy.get("rope_scaling") or {})
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params.pop("type")
    params.setdefault("rope_type", "default")
    theta = legacy.get("rope_theta", legacy.get("rotary_emb_base"))
    if theta is not None:
        params["rope_theta"] = float(theta)  # 4.x kept GPT-NeoX's base as written (10000); 5.x writes a float
    partial = legacy.get("partial_rotary_factor", legacy.get("rotary_pct"))
    if partial is not None:
        params["partial_rotary_factor"] = partial
    if "rope_local_base_freq" in legacy:  # Gemma 3 as 4.x wrote it: one base for global layers, one for local ones
        local = {"rope_type": "default", "rope_theta": legacy["rope_local_base_freq"]}
        out["rope_parameters"] = {"full_attention": _clean_rope(params), "sliding_attention": local}
        return out
    out["rope_parameters"] = _clean_rope(params)
    return out


# fields 5.x writes with their default value for these model types (dataclass fields of their configs) where 4.x
# leaves them out: absent means the same there
_DEFAULTS_WRITTEN_BY_5 = {"gpt2": {"add_cross_attention": False}, "gpt_neox": {"is_decoder": False}}


def release_neutral_config(cfg: dict) -> dict:
    """A config dict's computation keys (``fv.parity.identity.normalize_config``: no ``None``, no bookkeeping keys)
    in one spelling for every supported release, 5.x's:

    - rope keys folded into ``rope_parameters`` (``rope_parameters_of``); Phi-3's full rotary factor, which 5.x
      writes there (1.0) and 4.x leaves out;
    - fields 5.x writes at their default and 4.x leaves out (GPT-2's ``add_cross_attention``, GPT-NeoX's
      ``is_decoder``);
    - ``layer_types`` of Qwen2 and Gemma 2, which 5.x writes and 4.x derives at run time, derived as 5.x does;
    - Gemma's ``hidden_activation`` (4.x: the activation it runs; 5.x runs ``hidden_act``) dropped where it
      equals ``hidden_act``; Gemma 2's ``cache_implementation: hybrid`` (4.x's generation default) dropped.

    - the dtype key: 4.x's ``torch_dtype`` is 5.x's ``dtype``.

    A config 5.x wrote comes out as it went in (its digests in committed goldens stay as they are)."""
    out = rope_parameters_of(cfg)
    if "torch_dtype" in out:
        value = out.pop("torch_dtype")
        out.setdefault("dtype", value)
    mt = out.get("model_type")
    for k, v in _DEFAULTS_WRITTEN_BY_5.get(mt, {}).items():
        out.setdefault(k, v)
    if mt == "phi3" and isinstance(out.get("rope_parameters"), dict):
        out["rope_parameters"] = {**out["rope_parameters"]}
        out["rope_parameters"].setdefault("partial_rotary_factor", 1.0)
    n = out.get("num_hidden_layers")
    if "layer_types" not in out and isinstance(n, int):
        if mt == "qwen2":
            window, first = out.get("sliding_window"), out.get("max_window_layers", 28)
            out["layer_types"] = ["sliding_attention" if window is not None and i >= first else "full_attention" for i in range(n)]
        elif mt == "gemma2":
            out["layer_types"] = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n)]
    if mt in ("gemma", "gemma2") and out.get("hidden_activation") == out.get("hidden_act", "gelu_pytorch_tanh"):
        out.pop("hidden_activation", None)
        out.setdefault("hidden_act", "gelu_pytorch_tanh")
    if mt == "gemma2" and out.get("cache_implementation") == "hybrid":
        del out["cache_implementation"]
    return out


def _clean_rope(rp: dict) -> dict:
    rp = {k: v for k, v in rp.items() if v is not None}
    if "type" in rp and "rope_type" not in rp:
        rp["rope_type"] = rp.pop("type")
    return rp


def config_dtype(config: Any) -> Any:
    """The dtype a loaded config records for its checkpoint (``dtype`` in 5.x, ``torch_dtype`` in 4.x), or None."""
    return getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)


# ---- key/value caches --------------------------------------------------------------------------------------
def new_dynamic_cache(config: Any = None) -> Any:
    """An empty ``DynamicCache`` (given the model's text config where the release takes one)."""
    import inspect

    from transformers import DynamicCache

    if config is not None and "config" in inspect.signature(DynamicCache.__init__).parameters:
        return DynamicCache(config=config)
    return DynamicCache()


def no_cache_object(model: Any) -> str | None:
    """None where ``model`` takes a ``Cache`` object as its key/value cache, else why not in one line: on 4.x a
    model class says so (``_supports_cache_class``; GPT-2, GPT-J and GPT-NeoX keep tuples of tensors on 4.44.2)."""
    if transformers_version().major >= 5 or getattr(model, "_supports_cache_class", True):
        return None
    return f"{type(model).__name__} of transformers {transformers_version()} takes no Cache object (it keeps tuples)"


def cache_kv(cache: Any) -> list[tuple[Any, Any]]:
    """Per layer ``(keys, values)`` of a ``DynamicCache`` of either layout (empty where it holds none)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [(getattr(l, "keys", None), getattr(l, "values", None)) for l in layers]
    keys, values = getattr(cache, "key_cache", None), getattr(cache, "value_cache", None)
    if keys is None or values is None:
        return []
    return list(zip(keys, values))


def set_cache_kv(cache: Any, kv: list[tuple[Any, Any]]) -> None:
    """Put ``kv`` (per layer ``(keys, values)``, as ``cache_kv`` gave) back into ``cache``, which holds that many layers."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer, (k, v) in zip(layers, kv):
            layer.keys, layer.values = k, v
        return
    for i, (k, v) in enumerate(kv):
        cache.key_cache[i], cache.value_cache[i] = k, v


# ---- logits -----------------------------------------------------------------------------------------------------
# model types whose causal-LM head handed back float32 logits (``logits.float()``) before transformers 4.46; from 4.46
# the logits keep the model's dtype. In half precision every probability (indirect effects, injection scores) then
# differs in its last bits between releases on either side of 4.46
LOGITS_UPCAST_UNTIL = Version("4.46.0")
LOGITS_UPCAST_TYPES = frozenset({
    "llama", "gemma", "gemma2", "olmo", "qwen2", "qwen2_moe", "mistral", "mixtral", "phi", "phi3", "starcoder2",
    "cohere", "jetmoe", "jamba", "nemotron", "chameleon", "recurrent_gemma", "gptj"})


def logits_upcast(model_type: str, version: str | Version | None = None) -> bool:
    """Whether transformers ``version`` (default: the installed one) hands ``model_type``'s logits back in float32."""
    v = transformers_version() if version is None else Version(str(version))
    return v < LOGITS_UPCAST_UNTIL and model_type in LOGITS_UPCAST_TYPES


def logits_release_difference(model_type: str, dtype: Any, made_with: str | None) -> str | None:
    """Why values made on transformers ``made_with`` (goldens) and on the installed release differ beyond the
    last bits for a ``model_type`` model computing in ``dtype``: one release upcasts its logits to float32 and the
    other keeps them in half precision. None where they compute alike (float32, or both on one side of 4.46)."""
    import torch

    if made_with is None or dtype not in (torch.float16, torch.bfloat16):
        return None
    try:
        then, now = logits_upcast(model_type, made_with), logits_upcast(model_type)
    except ValueError:
        return None
    if then == now:
        return None
    half = str(dtype).replace("torch.", "")

    def says(v: Any, up: bool) -> str:
        return f"transformers {v} {'upcasts them to float32' if up else f'keeps them in {half}'}"

    return (f"{model_type} logits: {says(made_with, then)}, {says(transformers_version(), now)} (logits.float() went in "
            "4.46), so every probability differs in its last bits")


# ---- decoder layer outputs ---------------------------------------------------------------------------------
def layer_hidden(output: Any) -> Any:
    """The hidden states a decoder layer returned: the tensor itself (5.x), or the first item of its tuple (4.x)."""
    return output[0] if isinstance(output, tuple) else output


def with_layer_hidden(output: Any, hidden: Any) -> Any:
    """``output`` with its hidden states replaced by ``hidden``, in the same form (tuple or tensor)."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


# ---- tokenizer files ---------------------------------------------------------------------------------------
def portable_tokenizer_json(data: dict) -> dict:
    """A ``tokenizer.json`` dict in the form every supported ``tokenizers`` reads: BPE merges as ``"a b"``
    strings (0.19 reads nothing else). Unchanged where they already are, or where a merge's part holds a space
    (then only the pair form can say it; such a tokenizer needs tokenizers>=0.20)."""
    model = data.get("model") or {}
    merges = model.get("merges")
    if model.get("type") != "BPE" or not merges or not isinstance(merges[0], list):
        return data
    if any(" " in part for pair in merges for part in pair):
        return data
    return {**data, "model": {**model, "merges": [" ".join(pair) for pair in merges]}}


def tokenizer_json_text(data: dict) -> str:
    """``data`` as the text ``tokenizers`` writes with ``pretty=True`` (2 spaces, UTF-8, no final newline)."""
    return json.dumps(data, indent=2, ensure_ascii=False)


def portable_tokenizer_config(cfg: dict) -> dict:
    """A ``tokenizer_config.json`` dict every supported transformers loads the same way: a 5.x
    ``TokenizersBackend`` becomes ``PreTrainedTokenizerFast`` (what it is on 4.x), and a fast tokenizer says
    its model takes ``input_ids`` and ``attention_mask`` only (4.x's ``PreTrainedTokenizerFast`` otherwise
    returns ``token_type_ids``, which ``LlamaForCausalLM.forward`` refuses)."""
    out = {k: v for k, v in cfg.items() if k not in ("backend", "is_local", "local_files_only")}
    if out.get("tokenizer_class") in (None, "TokenizersBackend"):
        out["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
    if out["tokenizer_class"] == PORTABLE_TOKENIZER_CLASS and "token_type_ids" in out.get("model_input_names", ["token_type_ids"]):
        out["model_input_names"] = list(MODEL_INPUT_NAMES)
    return out


def rewrite_tokenizer_folder(folder: str | Path) -> list[str]:
    """Rewrite ``folder``'s ``tokenizer.json`` and ``tokenizer_config.json`` in place in the portable form;
    returns the files changed."""
    from fv.io import write_text

    folder = Path(folder)
    changed = []
    tj = folder / "tokenizer.json"
    if tj.is_file():
        data = json.loads(tj.read_text(encoding="utf-8"))
        new = portable_tokenizer_json(data)
        if new is not data:
            write_text(tj, tokenizer_json_text(new))
            changed.append(tj.name)
    tc = folder / "tokenizer_config.json"
    if tc.is_file() and tj.is_file():  # only a fast tokenizer's (a slow one's class is the checkpoint's own)
        cfg = json.loads(tc.read_text(encoding="utf-8"))
        new_cfg = portable_tokenizer_config(cfg)
        if new_cfg != cfg:
            write_text(tc, json.dumps(new_cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
            changed.append(tc.name)
    return changed


def portable_sentencepiece_config(cfg: dict) -> dict:
    """A Llama/Gemma SentencePiece ``tokenizer_config.json`` (beside its ``tokenizer.json``) without
    ``add_prefix_space: true``: wherever it is set, transformers 4.x rebuilds the fast tokenizer from the slow one,
    which needs protobuf (not in the user's pinned set), and gets the ids ``tokenizer.json`` gives anyway (its
    normalizer prepends the space mark); 5.x gives the same ids either way."""
    if cfg.get("tokenizer_class") in ("LlamaTokenizer", "GemmaTokenizer") and cfg.get("add_prefix_space") is True:
        return {k: v for k, v in cfg.items() if k != "add_prefix_space"}
    return cfg


def has_transformers_class(name: str) -> bool:
    """Whether the installed transformers has a class of that name at its top level."""
    import transformers

    return hasattr(transformers, name)


def rewrite_command(folder: str | Path) -> str:
    return f"python -m fv.compat tokenizer {folder}"


def check_tokenizer_folder(folder: str | Path) -> None:
    """Stop in one line, naming the fix, when ``folder``'s tokenizer files need a release newer than the
    installed one: a 5.x ``tokenizer_class`` (``TokenizersBackend``) on 4.x, pair merges on tokenizers 0.19."""
    folder = Path(folder)
    problems = []
    tc = folder / "tokenizer_config.json"
    if tc.is_file():
        try:
            cls = json.loads(tc.read_text(encoding="utf-8")).get("tokenizer_class")
        except (ValueError, OSError):
            cls = None
        if cls == "TokenizersBackend" and not has_transformers_class(cls):
            problems.append(f"its tokenizer_config.json names tokenizer_class {cls} (written by transformers 5.x), "
                            f"which transformers {transformers_version()} does not have")
    tj = folder / "tokenizer.json"
    if tj.is_file() and tokenizers_version() < TOKENIZERS_PAIR_MERGES_SINCE and _pair_merges(tj):
        problems.append(f"its tokenizer.json writes BPE merges as pairs (tokenizers>=0.20), which tokenizers "
                        f"{tokenizers_version()} cannot read")
    if problems:
        raise FVError(f"the tokenizer in {folder} does not load here: {'; '.join(problems)}. Rewrite it in the form "
                      f"every release reads (PreTrainedTokenizerFast, merges as \"a b\"): {rewrite_command(folder)}")


def _pair_merges(path: Path) -> bool:
    """Whether a tokenizer.json's BPE merges are pairs (``["a", "b"]``) rather than ``"a b"`` strings."""
    try:
        merges = (json.loads(path.read_text(encoding="utf-8")).get("model") or {}).get("merges")
    except (ValueError, OSError):
        return False
    return bool(merges) and isinstance(merges[0], list)


# ---- bitsandbytes ------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def cpu_4bit() -> tuple[bool, str]:
    """Whether 4-bit NF4 runs on the CPU here (bitsandbytes>=0.50 and accelerate, read from their metadata
    without importing them: importing bitsandbytes takes seconds), and why not in one line."""
    bnb, acc = installed_version("bitsandbytes"), installed_version("accelerate")
    if bnb is None or acc is None:
        missing = " and ".join(n for n, v in (("bitsandbytes", bnb), ("accelerate", acc)) if v is None)
        return False, f"4-bit NF4 needs bitsandbytes>=0.50 and accelerate ({missing} not installed): pip install 'fv[quant]'"
    if bnb < BNB_CPU_4BIT_SINCE:
        return False, (f"4-bit NF4 on the CPU needs bitsandbytes>=0.50; this environment has {bnb} "
                       "(it runs 4-bit on CUDA only)")
    return True, f"bitsandbytes {bnb} with accelerate {acc}"


def main(argv: list[str] | None = None) -> int:
    """``python -m fv.compat tokenizer DIR``: rewrite a tokenizer folder in the form every supported release reads."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "tokenizer":
        print("usage: python -m fv.compat tokenizer DIR   (rewrites DIR's tokenizer.json and tokenizer_config.json "
              "in place, in the form transformers 4.44.2 to 5.x and tokenizers 0.19 on read)", file=sys.stderr)
        return 2
    folder = Path(args[1])
    if not (folder / "tokenizer.json").is_file():
        print(f"{folder}: no tokenizer.json there", file=sys.stderr)
        return 2
    changed = rewrite_tokenizer_folder(folder)
    print(f"{folder}: rewrote {', '.join(changed)}" if changed else f"{folder}: already in the portable form")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
