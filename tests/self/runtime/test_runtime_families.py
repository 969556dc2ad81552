"""fv's runtime on decoder families the reference's loader has no branch for (or whose attention it never saw):
tiny Mistral, Qwen2, Gemma 2, Gemma 3, Phi-3 and OLMo 2 (``fv.model.tiny.RUNTIME_FAMILY_TINY``), and the multimodal
Gemma 3 wrapper (``MULTIMODAL_TINY``: a vision tower beside the language model, tests/self/door/test_multimodal.py), each run by
``fv run`` in both modes with no extra flags, fast mode checked against exact mode within the compute dtype's
tolerance, with the same top heads. A self-test: fv checking itself on its own tiny models.

What each model stresses: Mistral a sliding window (16 tokens) shorter than every prompt; Qwen2 q/k/v biases and
a tokenizer without BOS; Gemma 2 heads x head_dim != hidden (4 x 24 vs 64), alternating sliding/global layers,
soft-capping and norms after the blocks; Gemma 3 local/global layers and q/k norms; Phi-3 a fused qkv
projection; OLMo 2 q/k norms and norms after the blocks.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from fv.cli import main
from fv.io import load_tensor_file
from fv.model.tiny import MULTIMODAL_TINY, RUNTIME_FAMILY_TINY, SLIDING_WINDOW, TINY_MODELS, ensure_tiny_model, tiny_unavailable
from fv.parity.compare import diff_tensors, rms, tolerance_for

pytestmark = pytest.mark.tiny

N_TRIALS, N_TOP, EDIT_LAYER = 2, 5, 3


def edit_layer(name: str) -> int:
    """EDIT_LAYER, or the last layer of a model with fewer layers (the 2-layer multimodal Gemma 3)."""
    return min(EDIT_LAYER, TINY_MODELS[name].n_layers - 1)


def _fv_run(name: str, mode: str, out: Path, dtype: str | None) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["run", "--model", name, "--mode", mode, "--out", str(out), "--max-trials", str(N_TRIALS),
                   "--n-top-heads", str(N_TOP), "--edit-layer", str(edit_layer(name)), "--no-plots"]
                  + (["--dtype", dtype] if dtype else []))
    return rc, err.getvalue()


# every family with no flags (tiny-gemma2 and tiny-gemma3 compute in float16 by the Gemma rule), and a bfloat16 run
# (a family whose class the installed transformers lacks, Gemma 3 and OLMo 2 on 4.44.2, is skipped, counted, with why)
RUNS = [pytest.param((n, d), id=n + (f"-{d}" if d else ""), marks=[pytest.mark.skipif(bool(tiny_unavailable(n)), reason=str(tiny_unavailable(n)))])
        for n, d in [(n, None) for n in RUNTIME_FAMILY_TINY + MULTIMODAL_TINY] + [("tiny-mistral", "bfloat16")]]


@pytest.fixture(scope="module", params=RUNS)
def family(request, tmp_path_factory, runtime_family_runs):
    """(name, {mode: (exit code, stderr, output folder)}) of ``fv run`` in both modes on one tiny model, made once
    per session (``runtime_family_runs``)."""
    name, dtype = request.param

    def make():
        base = tmp_path_factory.mktemp(name)
        return {mode: (*_fv_run(name, mode, base / mode, dtype), base / mode) for mode in ("exact", "fast")}

    return name, runtime_family_runs.get(request.param, make)


def test_fv_run_succeeds_in_both_modes_without_flags(family):
    name, runs = family
    for mode, (rc, err, out) in runs.items():
        assert rc == 0, f"fv run --model {name} --mode {mode} exited {rc}:\n{err[-2000:]}"
        for f in ("mean_activations.pt", "indirect_effect.pt", "top_heads.json", "fv_global_resid.pt", "eval_summary.json"):
            assert (out / f).is_file(), f"fv run --mode {mode} on {name} wrote no {f}"
        assert "fast indirect effect unavailable" not in err, f"fast mode fell back to exact on {name}: {err[-1000:]}"


def test_loading_rule_is_said_in_one_line(family):
    name, runs = family
    err = runs["exact"][1]
    meta = json.loads((runs["exact"][2] / "indirect_effect_meta.json").read_text())
    lines = [l for l in err.splitlines() if l.startswith(f"model {name}:")]
    assert len(lines) == 1 and meta["loading_rule"] in lines[0], err[-2000:]
    if meta["model_type"] in ("mistral", "qwen2", "phi3"):  # no branch in the reference's loader
        assert "has no rule for" in lines[0] and ("the checkpoint's dtype" in lines[0] or "overridden by --dtype" in lines[0])


def test_fast_equals_exact_within_the_compute_dtype_tolerance(family):
    name, runs = family
    ex, fa = runs["exact"][2], runs["fast"][2]
    dtype = getattr(torch, json.loads((ex / "indirect_effect_meta.json").read_text())["dtype"])
    tol = tolerance_for(dtype, exact=False)
    for f in ("mean_activations.pt", "indirect_effect.pt"):
        a, b = load_tensor_file(ex / f), load_tensor_file(fa / f)
        d = diff_tensors(a, b, tol)
        assert d.n_mismatch == 0, f"{name} {f}:\n" + "\n".join(d.lines(tol))
        # effects of a random tiny model are small next to atol: in float32 also hold them to their scale (in float16
        # they are differences of float16 probabilities, whose step is the scale itself)
        if f == "indirect_effect.pt" and dtype == torch.float32:
            assert d.max_abs <= 1e-3 * float(a.abs().max()), f"{name} {f}:\n" + "\n".join(d.lines(tol))
    heads = [[tuple(h[:2]) for h in json.loads((o / "top_heads.json").read_text())] for o in (ex, fa)]
    if dtype == torch.float32:
        assert heads[0] == heads[1], f"{name}: top heads exact {heads[0]} fast {heads[1]}"
    else:  # half-precision effects are differences of half-precision probabilities: heads may swap only where
        # exact mode's own scores tie within the dtype's tolerance
        mean = load_tensor_file(ex / "indirect_effect.pt").mean(dim=0)
        scale = rms(mean)
        for (le, he), (lf, hf) in zip(*heads):
            assert tol.close(float(mean[lf, hf]), float(mean[le, he]), scale), f"{name}: top heads exact {heads[0]} fast {heads[1]}"


def test_the_tiny_models_have_the_shapes_they_stand_for():
    """The features the families are here for are really in the tiny models, so the tests above test them."""
    cfg = {n: json.loads((ensure_tiny_model(n) / "config.json").read_text()) for n in RUNTIME_FAMILY_TINY}
    g2 = cfg["tiny-gemma2"]
    assert g2["num_attention_heads"] * g2["head_dim"] != g2["hidden_size"]
    assert g2["sliding_window"] == SLIDING_WINDOW and g2["attn_logit_softcapping"] and g2["final_logit_softcapping"]
    assert {"sliding_attention", "full_attention"} <= set(cfg["tiny-gemma3"]["layer_types"])
    assert cfg["tiny-mistral"]["sliding_window"] == SLIDING_WINDOW
    from safetensors import safe_open

    with safe_open(str(ensure_tiny_model("tiny-qwen2") / "model.safetensors"), "pt") as fh:
        assert "model.layers.0.self_attn.q_proj.bias" in fh.keys()
    with safe_open(str(ensure_tiny_model("tiny-phi3") / "model.safetensors"), "pt") as fh:
        assert "model.layers.0.self_attn.qkv_proj.weight" in fh.keys()


def test_head_dim_comes_from_the_model_not_hidden_over_heads():
    from fv.model.loading import load_model

    lm = load_model("tiny-gemma2", device="cpu")
    assert (lm.info.n_heads, lm.info.head_dim, lm.info.d_model) == (4, 24, 64)


def test_prompts_are_longer_than_the_sliding_window(family):
    from fv.model.tokenizers import load_tokenizer

    name, runs = family
    trials = json.loads(next(runs["exact"][2].glob("fixed_trials_*.json")).read_text())["trials"][:N_TRIALS]
    tok = load_tokenizer(ensure_tiny_model(name))
    shortest = min(len(tok(t["clean_prompt_str"]).input_ids) for t in trials)
    assert shortest > 2 * SLIDING_WINDOW, f"{name}: a prompt of {shortest} tokens does not outrun the window"


def test_fast_refuses_a_mask_it_cannot_take_in_one_line():
    """A 2-D padding mask (flash attention) or a block mask cannot be reshaped into the patched rows' masks:
    fast mode says why in one line (``indirect_effects`` then warns and runs exact)."""
    from fv.runtime.effects_fast import FastUnavailable, last_rows

    with pytest.raises(FastUnavailable) as exc:
        last_rows(torch.ones(2, 10, dtype=torch.long), [8, 9], 10, torch.float32, torch.device("cpu"))
    assert "\n" not in str(exc.value) and "4-D mask" in str(exc.value)
