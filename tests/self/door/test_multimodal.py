"""Multimodal wrappers: fv attaches to the language model, never to the vision tower.

Gemma 3 from 4B up loads as ``Gemma3ForConditionalGeneration``: a SigLIP vision tower beside the language model.
On ``tiny-gemma3-mm`` (2-layer text and vision towers, width 64; ``fv.model.tiny.MULTIMODAL_TINY``) the vision
encoder's layer list comes first in the module tree and is as long as the text's, so "the first list of
``num_hidden_layers`` layers" is the vision tower's: hooks there never fire on text and an FV added there does
nothing. ``fv.model.tree.language_model`` finds the language model first (the model's ``get_decoder()``, else a
``language_model`` submodule); layers, projections and head sizes are still found from the module tree.

fv's runtime runs it exact and fast (tests/self/runtime/test_runtime_families.py runs ``fv run`` on it in both modes); the
reference cannot (its loader's Gemma branch reads ``num_attention_heads`` off the top config, which a multimodal
config keeps in ``text_config``; its hooks read the layer number as the third dotted part of a hook name), and the
gate says so in one line, in either mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from fv.errors import FVError
from fv.model.tiny import MULTIMODAL_TINY, TINY_MODELS, ensure_tiny_model, tiny_unavailable
from fv.model.tree import inspect_model, language_model
from fv.paths import REPO_ROOT

pytestmark = pytest.mark.tiny

NAME = "tiny-gemma3-mm"


@pytest.fixture(scope="module")
def mm():
    from fv.model.loading import load_model

    return load_model(NAME, device="cpu")


def _first_list_of(model: nn.Module, n: int) -> str:
    """The rule fv used before: the first ModuleList of ``n`` modules anywhere in the tree."""
    return next(name for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n)


def test_the_tiny_multimodal_model_is_what_it_stands_for():
    cfg = json.loads((ensure_tiny_model(NAME) / "config.json").read_text())
    assert cfg["architectures"] == ["Gemma3ForConditionalGeneration"] and cfg["model_type"] == "gemma3"
    text, vision = cfg["text_config"], cfg["vision_config"]
    assert text["num_hidden_layers"] == vision["num_hidden_layers"] == 2
    assert text["hidden_size"] == vision["hidden_size"] == 64
    assert {"sliding_attention", "full_attention"} <= set(text["layer_types"])
    assert NAME in MULTIMODAL_TINY and TINY_MODELS[NAME].n_layers == 2


def test_it_loads_through_the_causal_lm_auto_class(mm):
    """``AutoModelForCausalLM`` maps a Gemma 3 multimodal config to ``Gemma3ForConditionalGeneration`` on
    transformers 5.x; fv loads it by the Gemma rule (float16), like the text-only Gemma 3."""
    assert type(mm.model).__name__ == "Gemma3ForConditionalGeneration"
    assert mm.dtype == torch.float16 and "reference rule for Gemma" in mm.loading_rule
    assert mm.prepend_bos is True


def test_a_release_whose_causal_lm_class_lacks_it_loads_it_as_image_text_to_text(monkeypatch):
    """transformers releases before 5.x map Gemma 3's multimodal config only from ``AutoModelForImageTextToText``:
    fv falls back to that class there (a text-only config never does)."""
    import transformers
    from transformers import AutoConfig

    from fv.model.loading import causal_lm_class

    mm_cfg = AutoConfig.from_pretrained(str(ensure_tiny_model(NAME)))
    text_cfg = AutoConfig.from_pretrained(str(ensure_tiny_model("tiny-gemma3")))
    assert causal_lm_class(mm_cfg) is transformers.AutoModelForCausalLM
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "_model_mapping", {})
    assert causal_lm_class(mm_cfg) is transformers.AutoModelForImageTextToText
    assert causal_lm_class(text_cfg) is transformers.AutoModelForCausalLM


def test_layers_are_the_language_models_not_the_vision_towers(mm):
    info = mm.info
    assert _first_list_of(mm.model, info.n_layers) == "model.vision_tower.encoder.layers"  # the trap is real
    assert language_model(mm.model)[0] == "model.language_model"
    assert info.layer_names == ["model.language_model.layers.0", "model.language_model.layers.1"]
    assert info.attn_out_names == [f"model.language_model.layers.{i}.self_attn.o_proj" for i in range(2)]
    assert (info.n_layers, info.n_heads, info.head_dim, info.d_model) == (2, 4, 16, 64)
    assert all(".vision_tower." not in n for n in info.layer_names + info.attn_out_names)


def test_capture_hooks_fire_on_text_and_the_fv_changes_the_logits(mm):
    """The projection's input is captured on a text forward, and a vector added to a layer's output changes the
    last token's logits (where the vision tower's layers would see nothing and change nothing)."""
    ids = torch.tensor([mm.tokenizer("Q: hot\nA: cold\n\nQ: up\nA:").input_ids])
    seen = []
    h = mm.info.attn_out[0].register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    try:
        clean = mm.model(input_ids=ids).logits[0, -1].float()
    finally:
        h.remove()
    assert seen == [(1, ids.shape[1], mm.info.n_heads * mm.info.head_dim)]

    def add(_m, _args, out):
        hidden = out[0] if isinstance(out, tuple) else out
        hidden = hidden.clone()
        hidden[:, -1] += 4.0
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    h = mm.info.layers[0].register_forward_hook(add)
    try:
        edited = mm.model(input_ids=ids).logits[0, -1].float()
    finally:
        h.remove()
    assert not torch.equal(clean, edited)


@pytest.mark.parametrize("name, first_layer", [("tiny-gpt2", "transformer.h.0"), ("tiny-gpt-neox", "gpt_neox.layers.0"),
                                               ("tiny-gpt-j", "transformer.h.0"), ("tiny-llama", "model.layers.0"),
                                               ("tiny-gemma3", "model.layers.0"), ("tiny-phi3", "model.layers.0")])
def test_text_only_models_keep_their_layer_names(name, first_layer):
    """Plain causal LMs answer ``get_decoder()`` with their base model: the same layers as before, by name."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(ensure_tiny_model(name)))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    info = inspect_model(model)
    assert info.layer_names[0] == first_layer and info.layer_names[0] == _first_list_of(model, info.n_layers) + ".0"


def test_a_multimodal_model_without_a_language_model_is_refused_in_one_line():
    class Cfg:
        model_type = "made_up"
        num_hidden_layers, num_attention_heads, hidden_size = 2, 4, 64

        def __init__(self):
            self.text = type("T", (), {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64})()

        def get_text_config(self):
            return self.text

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = Cfg()
            self.tower = nn.ModuleList([nn.Linear(64, 64) for _ in range(2)])

    with pytest.raises(FVError) as exc:
        inspect_model(Wrapper())
    assert "\n" not in str(exc.value) and "vision tower" in str(exc.value)


# ---- the gate: the reference lacks it, one line -------------------------------------------------------------------
def _session(src: Path, baukit: str | None, mode: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("FV_SRC_ROOT", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT",
                                                            "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "pytest", str(REPO_ROOT / "tests" / "parity" / "test_m2_stage_parity.py"), "-q", "-x",
           "-p", "no:xdist", "-p", "no:randomly", "-p", "no:cacheprovider", "--fv-out", str(cwd / "out"), "--no-src-cache",
           "--fv-model", NAME, "--src-model", mode, "--edit-layer", "1", "--n-top-heads", "3", "--max-trials", "2",
           "--src-compat", "--src-root", str(src)] + (["--baukit-root", baukit] if baukit else [])
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
@pytest.mark.skipif(bool(tiny_unavailable(NAME)), reason=str(tiny_unavailable(NAME)))
@pytest.mark.parametrize("mode", ["own", "shared"])
def test_the_gate_says_in_one_line_that_the_reference_lacks_it(reference, fv_options, mode, tmp_path):
    """Own mode: the reference's loader (its Gemma branch) fails on the multimodal config, found in its own process;
    shared mode: its hooks cannot name the language model's layers. Either way exit code 4, one line, no traceback."""
    baukit = fv_options.baukit_root or os.environ.get("FV_BAUKIT_ROOT")
    r = _session(reference.src_root, baukit, mode, tmp_path)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith(("ERROR: fv: ", "fv: "))]
    assert r.returncode == 4 and "Traceback" not in r.stderr and len(lines) == 1, f"exit {r.returncode}\n{r.stderr[-3000:]}"
    line = lines[0]
    assert NAME in line and "cannot run" in line, line
    if mode == "own":
        assert "utils/model_utils.py: load_gpt_model_and_tokenizer" in line and "num_attention_heads" in line, line
    else:
        assert "preflight reference family" in line and "model.language_model.layers.0" in line, line
