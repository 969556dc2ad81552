"""fv.compat: the differences between the releases fv supports (transformers 4.44.2 with tokenizers 0.19, the user's
pinned set, up to 5.x), each checked where it can fail.

Two kinds of checks. Unit checks give each answer of fv.compat for both ends (the release it reads is patched).
End-to-end checks cross the releases for real: the files fv writes here (tiny tokenizers, tiny model folders) are
read by the other end in a subprocess. In fv's venv (5.x) the other end is the user's pinned transformers 4.44.2
and tokenizers 0.19 (``tests/support/pinned_transformers.py``, set up by ``.ci/run``; skipped, named, where it is
not); in a venv that holds 4.44.2 itself the checks read the files in this process.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from packaging.version import Version

from fv import compat
from fv.errors import FVError
from fv.model.tiny import FAMILY_TINY, RUNTIME_FAMILY_TINY, SPM_TINY, TINY_MODELS, align_safetensors, ensure_tiny_model
from fv.parity.identity import config_digest, normalize_config
from fv.paths import FIXTURES, REPO_ROOT

pytestmark = [pytest.mark.m0, pytest.mark.tiny]

ON_4X = compat.transformers_version().major < 5
TEXTS = ["Q: hot\nA: cold\n\nQ: big\nA:", " leading space", "ünïcödé 日本語 🙂", "Numbers 1234 and  two  spaces", ""]


@pytest.fixture
def release(monkeypatch):
    """Make fv.compat read ``transformers.__version__`` (and tokenizers') as given."""
    import tokenizers
    import transformers

    def set_to(tf: str | None = None, tok: str | None = None) -> None:
        if tf is not None:
            monkeypatch.setattr(transformers, "__version__", tf)
        if tok is not None:
            monkeypatch.setattr(tokenizers, "__version__", tok)

    return set_to


def old_end() -> tuple[dict | None, str]:
    """The environment of a subprocess that runs transformers 4.44.2 (None: this process does) and why none, if none."""
    if ON_4X:
        return None, ""
    from tests.support.pinned_transformers import install_command, pinned_env

    env = pinned_env()
    if env is None:
        pytest.skip(f"transformers 4.44.2 is not set up beside this venv; set it up with: {install_command()}")
    return env, ""


def run_old_end(script: str, *args: str, tmp_path: Path) -> dict:
    """``script`` (it prints one JSON line last) under transformers 4.44.2 and tokenizers 0.19."""
    env, _ = old_end()
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["transformers"] == "4.44.2" and out["tokenizers"].startswith("0.19"), out
    return out


# ---- versions and loading keywords --------------------------------------------------------------------------
def test_dtype_keyword_by_release(release):
    release(tf="4.44.2")
    assert compat.dtype_keyword() == "torch_dtype"
    assert compat.loading_kwargs({"dtype": torch.float16, "attn_implementation": "eager"}) == {
        "torch_dtype": torch.float16, "attn_implementation": "eager"}
    release(tf="4.56.0")
    assert compat.dtype_keyword() == "dtype"
    release(tf="5.2.0")
    assert compat.loading_kwargs({"torch_dtype": torch.bfloat16}) == {"dtype": torch.bfloat16}
    assert compat.dtype_kwargs(None) == {}


def test_the_dtype_reaches_the_model_on_this_release():
    """4.44.2 takes an unknown ``dtype=`` as a config attribute and loads float32 silently: the keyword must be right."""
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(ensure_tiny_model("tiny-llama")), **compat.dtype_kwargs(torch.float16))
    assert m.dtype == torch.float16


def test_low_cpu_mem_usage_only_where_it_changes_the_load(release, monkeypatch):
    release(tf="4.44.2")
    monkeypatch.setattr(compat, "installed_version", lambda d: Version("0.33.0") if d == "accelerate" else None)
    assert compat.loading_kwargs({"low_cpu_mem_usage": True}) == {"low_cpu_mem_usage": True}
    monkeypatch.setattr(compat, "installed_version", lambda d: None)  # 4.x needs accelerate for that path
    assert compat.loading_kwargs({"low_cpu_mem_usage": True}) == {}
    release(tf="5.0.0")  # 5.x ignores it
    monkeypatch.setattr(compat, "installed_version", lambda d: Version("1.0"))
    assert compat.loading_kwargs({"low_cpu_mem_usage": True}) == {}


def test_attention_names_4_44_2_lacks_stop_in_one_line(release):
    release(tf="4.44.2")
    for name in (None, "auto", "eager", "sdpa", "flash_attention_2"):
        compat.check_attn_implementation(name)
    with pytest.raises(FVError) as exc:
        compat.check_attn_implementation("flex_attention")
    assert "not in transformers 4.44.2" in str(exc.value) and "\n" not in str(exc.value)
    release(tf="5.0.0")
    compat.check_attn_implementation("flex_attention")  # the model's own check answers there


def test_model_classes_the_release_lacks_are_named():
    assert compat.missing_model_class("LlamaConfig") is None
    why = compat.missing_model_class("NoSuchConfig")
    assert why and "NoSuchConfig" in why


@pytest.mark.skipif(not ON_4X, reason="transformers 5.x has every tiny model's class")
def test_tiny_families_this_release_lacks_are_refused_as_not_in_this_release():
    import transformers

    lacking = [n for n, sp in TINY_MODELS.items() if sp.family in ("gemma3", "gemma3_text", "olmo2")
               and not hasattr(transformers, {"gemma3": "Gemma3Config", "gemma3_text": "Gemma3TextConfig", "olmo2": "Olmo2Config"}[sp.family])]
    assert lacking, "4.44.2 lacks Gemma 3 and OLMo 2"
    for name in lacking:
        with pytest.raises(compat.NotInThisRelease):
            ensure_tiny_model(name)


# ---- bitsandbytes ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bnb, acc, ok, words", [
    ("0.42.0", "0.33.0", False, "bitsandbytes>=0.50; this environment has 0.42.0"),
    ("0.50.2", "1.0.0", True, "bitsandbytes 0.50.2"),
    (None, "0.33.0", False, "pip install 'fv[quant]'"),
])
def test_cpu_4bit_by_bitsandbytes_release(monkeypatch, bnb, acc, ok, words):
    versions = {"bitsandbytes": bnb and Version(bnb), "accelerate": acc and Version(acc)}
    monkeypatch.setattr(compat, "installed_version", lambda d: versions.get(d))
    compat.cpu_4bit.cache_clear()
    try:
        got, why = compat.cpu_4bit()
    finally:
        compat.cpu_4bit.cache_clear()
    assert got is ok and words in why and "\n" not in why


# ---- caches and decoder layer outputs -------------------------------------------------------------------------
def test_cache_of_this_release_round_trips():
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(ensure_tiny_model("tiny-llama")))
    n = cfg.num_hidden_layers
    for cache in (compat.new_dynamic_cache(cfg), compat.new_dynamic_cache()):  # 5.x makes the layers from the config
        kv = [(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)) for _ in range(n)]
        for i, (k, v) in enumerate(kv):
            cache.update(k, v, i)
        got = compat.cache_kv(cache)
        assert len(got) == n and all(torch.equal(a, k) and torch.equal(b, v) for (a, b), (k, v) in zip(got, kv))
        cache.update(torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4), 0)  # a further token, as a forward pass adds
        assert compat.cache_kv(cache)[0][0].shape[-2] == 4
        compat.set_cache_kv(cache, kv)  # back to the prefix
        assert [k.shape[-2] for k, _ in compat.cache_kv(cache)] == [3] * n and compat.cache_kv(cache)[0][0] is kv[0][0]


def test_cache_of_the_other_layout():
    """4.x before 4.54 keeps two lists; 4.54 on, per-layer objects: both read and written alike."""
    from types import SimpleNamespace

    kv = [(torch.zeros(1), torch.ones(1)), (torch.full((1,), 2.0), torch.full((1,), 3.0))]
    lists = SimpleNamespace(key_cache=[k for k, _ in kv], value_cache=[v for _, v in kv])
    layers = SimpleNamespace(layers=[SimpleNamespace(keys=k, values=v) for k, v in kv])
    for cache in (lists, layers):
        assert [(float(k), float(v)) for k, v in compat.cache_kv(cache)] == [(0.0, 1.0), (2.0, 3.0)]
        compat.set_cache_kv(cache, [(torch.full((1,), 9.0), torch.full((1,), 8.0))] * 2)
        assert [(float(k), float(v)) for k, v in compat.cache_kv(cache)] == [(9.0, 8.0)] * 2
    assert compat.cache_kv(SimpleNamespace()) == []


def test_models_that_keep_tuple_caches_are_named(release):
    class Gpt2Like:
        _supports_cache_class = False

    release(tf="4.44.2")
    assert "takes no Cache object" in compat.no_cache_object(Gpt2Like())
    assert compat.no_cache_object(object()) is None
    release(tf="5.0.0")
    assert compat.no_cache_object(Gpt2Like()) is None


def test_decoder_layer_outputs_tuple_or_tensor():
    h, extra = torch.zeros(1, 2, 3), torch.ones(1)
    assert compat.layer_hidden(h) is h and compat.layer_hidden((h, extra)) is h
    new = torch.ones(1, 2, 3)
    assert compat.with_layer_hidden(h, new) is new
    out = compat.with_layer_hidden((h, extra), new)
    assert isinstance(out, tuple) and out[0] is new and out[1] is extra


def test_decoder_layers_of_this_release_and_fvs_injection():
    """4.x's layers return tuples, 5.x's the tensor; fv's injection adds the vector either way."""
    from fv.model.loading import load_model
    from fv.runtime.hooks import add_to_output

    lm = load_model("tiny-llama", "cpu")
    ids = lm.tokenizer("Q: hot\nA:", return_tensors="pt").input_ids
    seen = []
    handle = lm.info.layers[0].register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        clean = lm.model(input_ids=ids).logits
    finally:
        handle.remove()
    assert isinstance(seen[0], tuple) is ON_4X
    with add_to_output(lm.info.layers[0], torch.full((1, lm.info.d_model), 10.0)):
        edited = lm.model(input_ids=ids).logits
    assert not torch.equal(clean, edited)


# ---- config keys ----------------------------------------------------------------------------------------------
def test_portable_config_carries_the_4x_rope_keys():
    llama = {"model_type": "llama", "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}}
    assert compat.portable_config(llama) == {**llama, "rope_theta": 500000.0, "rope_scaling": None}
    neox = {"model_type": "gpt_neox", "rope_parameters": {"partial_rotary_factor": 0.25, "rope_theta": 10000.0, "rope_type": "default"}}
    assert {k: v for k, v in compat.portable_config(neox).items() if k != "rope_parameters"} == {
        "model_type": "gpt_neox", "rotary_emb_base": 10000.0, "rotary_pct": 0.25, "rope_scaling": None}
    scaled = {"model_type": "llama", "rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}}
    assert compat.portable_config(scaled)["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0}
    gemma3 = {"model_type": "gemma3", "text_config": {"model_type": "gemma3_text", "rope_parameters": {
        "full_attention": {"rope_theta": 1e6, "rope_type": "default"}, "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}}}}
    text = compat.portable_config(gemma3)["text_config"]
    assert (text["rope_theta"], text["rope_local_base_freq"]) == (1e6, 1e4)
    for cfg in (llama, neox, scaled, gemma3["text_config"]):  # the keys added only echo 5.x's own: one identity
        assert config_digest(compat.portable_config(cfg)) == config_digest(cfg)
    gemma = {"model_type": "gemma", "hidden_act": "gelu_pytorch_tanh"}
    assert compat.portable_config(gemma)["hidden_activation"] == "gelu_pytorch_tanh"
    assert config_digest(compat.portable_config(gemma)) == config_digest(gemma)


@pytest.mark.parametrize("old, new", [
    ({"model_type": "llama", "rope_theta": 500000.0, "rope_scaling": None, "torch_dtype": "float32"},
     {"model_type": "llama", "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}, "dtype": "float32"}),
    ({"model_type": "gpt_neox", "rotary_emb_base": 10000, "rotary_pct": 0.25},
     {"model_type": "gpt_neox", "is_decoder": False, "rope_parameters": {"partial_rotary_factor": 0.25, "rope_theta": 10000.0, "rope_type": "default"}}),
    ({"model_type": "gpt2", "n_layer": 6}, {"model_type": "gpt2", "n_layer": 6, "add_cross_attention": False}),
    ({"model_type": "gemma", "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh"},
     {"model_type": "gemma", "hidden_act": "gelu_pytorch_tanh"}),
    ({"model_type": "qwen2", "num_hidden_layers": 2, "max_window_layers": 28},
     {"model_type": "qwen2", "num_hidden_layers": 2, "max_window_layers": 28, "layer_types": ["full_attention"] * 2}),
    ({"model_type": "gemma2", "num_hidden_layers": 2, "cache_implementation": "hybrid"},
     {"model_type": "gemma2", "num_hidden_layers": 2, "layer_types": ["sliding_attention", "full_attention"]}),
    ({"model_type": "phi3", "rope_theta": 10000.0}, {"model_type": "phi3", "rope_parameters": {
        "rope_theta": 10000.0, "rope_type": "default", "partial_rotary_factor": 1.0}}),
])
def test_one_identity_for_both_spellings(old, new):
    assert normalize_config(old) == normalize_config(new)
    assert config_digest(old) == config_digest(new)


def test_a_key_that_computes_still_counts():
    base = {"model_type": "gpt_neox", "rotary_emb_base": 10000, "rotary_pct": 0.25}
    assert config_digest(base) != config_digest({**base, "rotary_pct": 0.5})
    assert config_digest({"model_type": "gemma2", "num_hidden_layers": 2}) != config_digest(
        {"model_type": "gemma2", "num_hidden_layers": 2, "layer_types": ["full_attention"] * 2})


# ---- tokenizer files ------------------------------------------------------------------------------------------
def test_portable_tokenizer_json_writes_merges_as_strings():
    pairs = {"model": {"type": "BPE", "merges": [["Ġ", "t"], ["i", "n"]], "vocab": {}}}
    assert compat.portable_tokenizer_json(pairs)["model"]["merges"] == ["Ġ t", "i n"]
    strings = {"model": {"type": "BPE", "merges": ["Ġ t"]}}
    assert compat.portable_tokenizer_json(strings) is strings
    spaced = {"model": {"type": "BPE", "merges": [["a b", "c"]]}}  # only pairs can say it
    assert compat.portable_tokenizer_json(spaced) is spaced
    unigram = {"model": {"type": "Unigram", "vocab": []}}
    assert compat.portable_tokenizer_json(unigram) is unigram


def test_portable_tokenizer_config():
    written_by_5 = {"backend": "tokenizers", "tokenizer_class": "TokenizersBackend", "bos_token": "<s>", "is_local": True}
    assert compat.portable_tokenizer_config(written_by_5) == {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "model_input_names": ["input_ids", "attention_mask"]}
    llama = {"tokenizer_class": "LlamaTokenizer"}  # its own class: its own model inputs
    assert compat.portable_tokenizer_config(llama) == llama


def test_the_fixture_tokenizer_is_in_the_portable_form():
    data = json.loads((FIXTURES / "tiny_tokenizer" / "tokenizer.json").read_text(encoding="utf-8"))
    assert all(isinstance(m, str) for m in data["model"]["merges"])
    assert compat.portable_tokenizer_json(data) is data
    cfg = json.loads((FIXTURES / "tiny_tokenizer" / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast" and "token_type_ids" not in cfg["model_input_names"]


def test_a_tokenizer_folder_a_newer_release_wrote_is_refused_in_one_line(release, tmp_path, monkeypatch):
    folder = tmp_path / "tok"
    folder.mkdir()
    data = json.loads((FIXTURES / "tiny_tokenizer" / "tokenizer.json").read_text(encoding="utf-8"))
    data["model"]["merges"] = [m.split(" ") for m in data["model"]["merges"]]  # as tokenizers 0.20+ write them
    (folder / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "TokenizersBackend", "backend": "tokenizers"}))
    monkeypatch.setattr(compat, "has_transformers_class", lambda name: name != "TokenizersBackend")  # as on 4.x
    release(tok="0.19.1")
    with pytest.raises(FVError) as exc:
        compat.check_tokenizer_folder(folder)
    msg = str(exc.value)
    assert "\n" not in msg and "TokenizersBackend" in msg and "pairs" in msg and f"python -m fv.compat tokenizer {folder}" in msg
    assert compat.main(["tokenizer", str(folder)]) == 0
    compat.check_tokenizer_folder(folder)  # nothing left to refuse
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert compat.main(["tokenizer", str(folder)]) == 0  # a second time: nothing changes


_LOAD_TOKENIZERS = """
import json, sys
import tokenizers, transformers
from tokenizers import Tokenizer
from fv.model.tokenizers import load_tokenizer
texts = json.loads(sys.argv[1])
out = {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__, "raw": {}, "auto": {}}
for folder in sys.argv[2:]:
    out["raw"][folder] = [Tokenizer.from_file(folder + "/tokenizer.json").encode(t).ids for t in texts]
    tok = load_tokenizer(folder)
    enc = tok(texts[0])
    out["auto"][folder] = {"class": type(tok).__name__, "keys": sorted(enc.keys()), "ids": [tok(t).input_ids for t in texts]}
print(json.dumps(out))
"""


def _tokenizer_folders() -> list[Path]:
    """The fixture tokenizer and the tokenizers of the tiny models built here (the Llama 3 one where it is set up)."""
    folders = [FIXTURES / "tiny_tokenizer"]
    for name in ("tiny-llama", "tiny-gpt2", "tiny-llama3tok", *SPM_TINY):
        try:
            folders.append(ensure_tiny_model(name))
        except FVError:
            continue  # tiny-llama3tok without its tokenizer: skipped where the plugin counts it
    return folders


def test_tiny_tokenizers_load_with_tokenizers_0_19_and_give_the_same_ids(tmp_path):
    """The files fv writes read alike on both ends: the fixture tokenizer and the tiny models' tokenizers load with
    tokenizers 0.19 and transformers 4.44.2, give the ids this release gives, and return no token_type_ids."""
    from fv.model.tokenizers import load_tokenizer

    folders = _tokenizer_folders()
    got = run_old_end(_LOAD_TOKENIZERS, json.dumps(TEXTS), *map(str, folders), tmp_path=tmp_path)
    for folder in folders:
        auto = got["auto"][str(folder)]
        assert auto["keys"] == ["attention_mask", "input_ids"], (folder, auto["keys"])
        if not ON_4X:
            here = load_tokenizer(folder)
            texts = [t for t in TEXTS if not (folder.name.startswith("tiny-llama2spm") and t.startswith(" "))]
            # tiny-llama2spm: a text that begins with a space is not compared (below)
            assert [here(t).input_ids for t in texts] == [ids for t, ids in zip(TEXTS, auto["ids"]) if t in texts], folder


@pytest.mark.skipif(ON_4X, reason="compares 5.x with 4.44.2; this process runs 4.x")
def test_llama2_spm_text_that_begins_with_a_space_is_a_known_release_difference(tmp_path):
    """transformers 4.44.2 reads tiny-llama2spm's tokenizer.json as written (the space mark prepended to a text that
    begins with a space: the sentencepiece library's own ids); 5.x's LlamaTokenizer folds the two. Prompts begin
    with a word or the BOS text, never a space, so the gates never meet it; this test says when that changes."""
    import sentencepiece as spm

    from fv.model.tokenizers import load_tokenizer

    folder = ensure_tiny_model("tiny-llama2spm")
    got = run_old_end(_LOAD_TOKENIZERS, json.dumps([" leading space"]), str(folder), tmp_path=tmp_path)
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    old = got["auto"][str(folder)]["ids"][0]
    assert old == [sp.bos_id()] + sp.encode(" leading space")
    assert load_tokenizer(folder)(" leading space").input_ids != old, "5.x now agrees with 4.44.2: drop this note"


_REFUSE = """
import json, sys
import tokenizers, transformers
from fv.errors import FVError
from fv.model.tokenizers import load_tokenizer
try:
    load_tokenizer(sys.argv[1])
    said = None
except FVError as exc:
    said = str(exc)
print(json.dumps({"transformers": transformers.__version__, "tokenizers": tokenizers.__version__, "said": said}))
"""


@pytest.mark.skipif(ON_4X, reason="needs a tokenizer folder transformers 5.x writes; this process runs 4.x")
def test_a_tokenizer_folder_5x_saved_is_refused_on_4_44_2_in_one_line_and_the_rewrite_loads(tmp_path):
    """``save_pretrained`` of 5.x writes ``TokenizersBackend`` and pair merges; fv on 4.44.2 refuses the folder in one
    line naming ``python -m fv.compat tokenizer DIR``; after that command it loads there, with the same ids."""
    from fv.model.tokenizers import load_tokenizer

    folder = tmp_path / "saved-by-5"
    here = load_tokenizer(FIXTURES / "tiny_tokenizer")
    here.save_pretrained(str(folder))
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "TokenizersBackend"
    said = run_old_end(_REFUSE, str(folder), tmp_path=tmp_path)["said"]
    assert said and "\n" not in said and f"python -m fv.compat tokenizer {folder}" in said, said
    proc = subprocess.run([sys.executable, "-m", "fv.compat", "tokenizer", str(folder)], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 0 and "rewrote" in proc.stdout, proc.stdout + proc.stderr
    got = run_old_end(_LOAD_TOKENIZERS, json.dumps(TEXTS), str(folder), tmp_path=tmp_path)["auto"][str(folder)]
    assert got["class"] == "PreTrainedTokenizerFast" and got["keys"] == ["attention_mask", "input_ids"]
    assert got["ids"] == [here(t).input_ids for t in TEXTS]
    assert [load_tokenizer(folder)(t).input_ids for t in TEXTS] == got["ids"]  # and 5.x still reads it alike


_LOAD_MODEL = """
import json, sys
import tokenizers, torch, transformers
from fv.model.loading import load_model
lm = load_model(sys.argv[1], "cpu")
ids = lm.tokenizer(sys.argv[2], return_tensors="pt").input_ids
torch.save({"logits": lm.model(input_ids=ids).logits}, sys.argv[3])
print(json.dumps({"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                  "rope_theta": getattr(lm.model.config, "rope_theta", None), "dtype": str(lm.dtype), "ids": ids.tolist()}))
"""


def test_a_tiny_model_folder_built_here_loads_on_4_44_2_with_its_numbers(tmp_path):
    """tiny-llama's folder (config.json as this release writes it, plus the 4.x rope keys) on 4.44.2: rope_theta
    500000 (not 4.x's default 10000, which a 5.x-only config would give it), the same ids and logits."""
    from fv.model.loading import load_model

    folder = ensure_tiny_model("tiny-llama")
    text = "Q: hot\nA: cold\n\nQ: big\nA:"
    got = run_old_end(_LOAD_MODEL, str(folder), text, str(tmp_path / "logits.pt"), tmp_path=tmp_path)
    assert got["rope_theta"] == 500000.0 and got["dtype"] == "torch.float32"
    if not ON_4X:
        lm = load_model(str(folder), "cpu")
        ids = lm.tokenizer(text, return_tensors="pt").input_ids
        assert ids.tolist() == got["ids"]
        old = torch.load(tmp_path / "logits.pt", weights_only=True)["logits"]
        assert torch.allclose(lm.model(input_ids=ids).logits, old, rtol=0, atol=1e-5)


_BUILD_ALL = """
import json, sys
import tokenizers, transformers
from fv.compat import NotInThisRelease
from fv.errors import FVError
from fv.model.tiny import TINY_MODELS, build_tiny_model
built, lacking = {}, {}
for name in sys.argv[2:]:
    try:
        build_tiny_model(TINY_MODELS[name], f"{sys.argv[1]}/{name}")
        built[name] = f"{sys.argv[1]}/{name}"
    except NotInThisRelease as exc:
        lacking[name] = str(exc)
print(json.dumps({"transformers": transformers.__version__, "tokenizers": tokenizers.__version__, "built": built, "lacking": lacking}))
"""


@pytest.mark.slow(seconds=30)
@pytest.mark.skipif(ON_4X, reason="compares 4.44.2's builds with 5.x's; this process runs 4.x")
def test_every_tiny_model_built_by_4_44_2_has_the_identity_of_5x(tmp_path):
    """Each family's tiny model built by transformers 4.44.2 (its own config.json spelling) and by this release:
    one config identity, one weights identity, loaded the same; the families 4.44.2 lacks are refused as such."""
    from fv.parity.identity import weights_digest

    names = [n for n in (*FAMILY_TINY, *RUNTIME_FAMILY_TINY, *SPM_TINY) if n != "tiny-llama3tok"]
    got = run_old_end(_BUILD_ALL, str(tmp_path / "old"), *names, tmp_path=tmp_path)
    assert set(got["lacking"]) == {"tiny-gemma3", "tiny-olmo2"}, got["lacking"]
    for name, folder in got["built"].items():
        new = ensure_tiny_model(name)
        assert config_digest(folder) == config_digest(new), (name, normalize_config(json.loads((Path(folder) / "config.json").read_text())),
                                                            normalize_config(json.loads((new / "config.json").read_text())))
        assert weights_digest(folder) == weights_digest(new), name


# ---- weights files ----------------------------------------------------------------------------------------------
def test_tiny_weights_are_64_byte_aligned_in_their_file(tmp_path):
    """A loader that maps the file (4.x with low_cpu_mem_usage, as the reference loads GPT-J) hands the model
    weights at the file's offsets; a CPU matmul over an unaligned weight rounds differently from one over a copy."""
    import struct

    from safetensors.torch import load_file

    for name in ("tiny-gpt-j", "tiny-gpt2", "tiny-llama"):
        path = ensure_tiny_model(name) / "model.safetensors"
        raw = path.read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8 : 8 + n])
        for key, info in header.items():
            a, b = info["data_offsets"] if key != "__metadata__" else (0, 0)
            if (b - a) % 64 == 0:
                assert (8 + n + a) % 64 == 0, (name, key)
    # the rewrite keeps every tensor, only moving them
    src = ensure_tiny_model("tiny-gpt-j") / "model.safetensors"
    copy = tmp_path / "model.safetensors"
    shutil.copyfile(src, copy)
    align_safetensors(copy)
    a, b = load_file(str(src)), load_file(str(copy))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_compat_module_is_the_one_place():
    """No other module of fv branches on the transformers or tokenizers version: they ask fv.compat."""
    offenders = []
    for path in (REPO_ROOT / "fv").rglob("*.py"):
        if path.name == "compat.py":
            continue
        text = path.read_text(encoding="utf-8")
        for needle in ("transformers.__version__ <", "transformers.__version__ >", "tokenizers.__version__ <",
                       "Version(transformers.__version__)", "\"torch_dtype\"", "cache.layers", ".key_cache"):
            if needle in text:
                offenders.append(f"{path.relative_to(REPO_ROOT)}: {needle}")
    assert not offenders, offenders
