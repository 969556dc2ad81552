"""Foundations every gate stands on: tiny models are byte-identical builds, and hooks really fire and go away."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fv.model.tiny import COMMITTED_TINY, TINY_MODELS, build_tiny_model
from fv.model.tree import inspect_model
from fv.runtime.hooks import add_to_output, capture_inputs, replace_output
from fv.runtime.prepared import equal_passes

pytestmark = pytest.mark.tiny


@pytest.mark.parametrize("name", sorted(set(TINY_MODELS) - set(COMMITTED_TINY)))  # drawn, not trained
def test_two_builds_are_byte_identical(tmp_path, name):
    a, b = build_tiny_model(TINY_MODELS[name], tmp_path / "a"), build_tiny_model(TINY_MODELS[name], tmp_path / "b")
    files = sorted(p.name for p in a.iterdir())
    assert "model.safetensors" in files and "tokenizer.json" in files
    assert files == sorted(p.name for p in b.iterdir())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f"{f} differs between two builds"


def test_tiny_model_shape(fv_model):
    info = fv_model.info
    cfg = fv_model.model.config
    assert info.n_layers >= 10, "--edit-layer 9 must be valid"
    assert cfg.num_key_value_heads < cfg.num_attention_heads, "GQA as in Llama 3"
    assert info.attn_out_names[0].endswith("o_proj") and len(info.layers) == info.n_layers
    assert "llama" in str(fv_model.path).lower()
    assert fv_model.prepend_bos


def _logits(lm, text="Q: hot\nA:"):
    return lm.model(**lm.tokenizer(text, return_tensors="pt").to(lm.device)).logits[:, -1, :]


def test_hooks_fire_and_are_removed(fv_model):
    """A tautology guard: each hook changes what it should, and after the block (even after an error) nothing is left."""
    lm, info = fv_model, fv_model.info
    clean = _logits(lm)
    with capture_inputs(info.attn_out) as cap:
        _logits(lm)
    assert sorted(cap) == list(range(info.n_layers))
    assert cap[0].shape[-1] == info.n_heads * info.head_dim

    with replace_output(info.attn_out[3], lambda x, out: torch.zeros_like(out)):
        patched = _logits(lm)
    assert not torch.equal(patched, clean)

    vec = torch.full((1, info.d_model), 5.0, dtype=lm.dtype)
    with add_to_output(info.layers[9], vec):
        added = _logits(lm)
    assert not torch.equal(added, clean)

    with pytest.raises(RuntimeError):
        with add_to_output(info.layers[9], vec):
            raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in lm.model.modules())
    assert torch.equal(_logits(lm), clean)


def test_module_tree_found_without_names(fv_model):
    """Renaming the model class or path changes nothing: the tree is read, not the name."""
    again = inspect_model(fv_model.model)
    assert again.attn_out_names == fv_model.info.attn_out_names
    assert again.head_dim * again.n_heads == fv_model.info.attn_out[0].in_features


@given(n=st.integers(0, 400), most=st.integers(1, 64))
def test_equal_passes_cover_every_item_once_in_the_fewest_near_equal_passes(n, most):
    passes = equal_passes(n, most)
    assert [i for p in passes for i in p] == list(range(n))
    assert len(passes) == -(-n // most)
    if n:
        sizes = [len(p) for p in passes]
        assert max(sizes) <= most and max(sizes) - min(sizes) <= 1
