"""M2 on every model family the reference supports: each family's tiny model, fv against the live reference
(shared-model mode: the reference's functions handed fv's model object), every stage bit for bit.

The families differ where parity is easy to lose: GPT-2's projection is a ``Conv1D`` with a bias, GPT-NeoX's a
biased ``Linear`` in a parallel-residual block (the reference's indirect-effect hook keeps both biases), the
others recompute a plain matmul; GPT-2, GPT-J, GPT-NeoX and OLMo tokenizers add no BOS, so the reference puts
the BOS text in its prompts and the fixed trials must say so (``prepend_bos_token_used: true``).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fv.model.loading_rules import pick_rule, reference_rule
from fv.model.tiny import FAMILY_TINY
from fv.model.tree import ADDMM_CONV1D, ADDMM_LINEAR, MATMUL
from fv.parity.run import compare_with, run_parity
from fv.parity.stages import STAGES, Params, fv_stage_values
from fv.paths import FIXTURES
from fv.pytest_plugin import load_session_model
from fv.runtime.trials import load_trials, make_icl_trials, save_trials

pytestmark = [pytest.mark.m2, pytest.mark.tiny]  # the plugin adds `src` to the tests that need the reference

N_TRIALS, N_SHOTS, EDIT_LAYER, N_TOP = 2, 5, 3, 5
_RUNS: dict = {}


def family_trials(lm, folder):
    """Fixed trials for this model: with the BOS text in the prompts exactly where its tokenizer adds no BOS."""
    raw = make_icl_trials(FIXTURES / "antonym_tiny.json", lm.tokenizer, N_TRIALS, N_SHOTS, seed=0,
                          model_name_for_tokenizer=lm.name, model_prepend_bos=lm.prepend_bos,
                          prepend_bos_token_used=not lm.prepend_bos, dataset_json_label="antonym_tiny.json")
    path = folder / f"fixed_trials_antonym_tiny_{lm.name}.json"
    save_trials(path, raw)
    return load_trials(path)


@pytest.fixture(scope="module", params=FAMILY_TINY)
def family_run(request, fv_options, reference, tmp_path_factory):
    from fv.reference.stages import STAGE_FUNCTIONS, live_source

    name = request.param
    if name not in _RUNS:
        lm = load_session_model(fv_options, name)
        out = tmp_path_factory.mktemp(f"family-{name}")
        trials = family_trials(lm, out)
        params = Params(n_top_heads=N_TOP, edit_layer=EDIT_LAYER, max_trials=N_TRIALS, mode=fv_options.mode)
        _RUNS[name] = run_parity(lm, trials, params, live_source(reference), out / "reports", stage_functions=STAGE_FUNCTIONS)
    return _RUNS[name]


@pytest.mark.parametrize("stage", STAGES)
def test_family_stage(family_run, stage):
    run = family_run
    result = run.result.stage(stage)
    if stage == "injection" and run.injection_error:
        pytest.skip(f"{run.injection_error} (run with --src-compat)")
    table = "\n".join(f"  {s.name}: {s.status}, {s.mismatch_count} mismatches, max_abs_diff {s.max_abs_diff}" for s in run.result.stages)
    where = f"{run.lm.name} ({run.lm.info.model_type}, projection {run.lm.info.projection}), stage {stage}:\n{table}"
    assert result.mismatch_count == 0, where
    if run.tolerance.name == "exact":
        assert result.max_abs_diff == 0.0, where


def test_family_trials_follow_bos_rule(family_run):
    """The BOS text is in the prompts exactly when the tokenizer adds no BOS, and the meta records it."""
    run = family_run
    meta = run.trials.meta
    assert meta["model_prepend_bos"] == run.lm.prepend_bos
    assert meta["prepend_bos_token_used"] is (not run.lm.prepend_bos)
    assert run.result.meta["tokenizer_prepends_bos"] == run.lm.prepend_bos


def test_family_bias_is_needed(family_run):
    """Where the reference keeps the projection bias, recomputing without it is caught by the gate."""
    run = family_run
    info = run.lm.info
    if info.projection == MATMUL:
        pytest.skip(f"{info.model_type}: the reference recomputes a plain matmul")
    if run.params.mode != "exact":
        pytest.skip("checked in exact mode")
    lm = dataclasses.replace(run.lm, info=dataclasses.replace(info, projection=MATMUL))
    subset = run.trials.subset(run.params.max_trials)
    values = fv_stage_values(lm, subset, run.params, run.trials.meta.get("prefixes"), run.trials.meta.get("separators"))
    result = compare_with(run, values).stage("indirect_effect")
    assert result.mismatch_count > 0 and result.max_abs_diff > 0.0, result


def test_family_fast_mode_agrees(family_run):
    """fast mode (key/value cache, batched last-token patches) uses the same per-family recompute."""
    run = family_run
    subset = run.trials.subset(run.params.max_trials)
    params = dataclasses.replace(run.params, mode="fast")
    fast = fv_stage_values(run.lm, subset, params, run.trials.meta.get("prefixes"), run.trials.meta.get("separators"))
    exact = run.fv.values["indirect_effect"]
    assert torch.allclose(fast.values["indirect_effect"], exact, atol=1e-5, rtol=0), (fast.values["indirect_effect"] - exact).abs().max()


EXPECTED_TREE = {  # model_type: (projection module class, recompute op, tokenizer adds BOS)
    "gpt2": ("Conv1D", ADDMM_CONV1D, False), "gptj": ("Linear", MATMUL, False), "gpt_neox": ("Linear", ADDMM_LINEAR, False),
    "llama": ("Linear", MATMUL, True), "gemma": ("Linear", MATMUL, True), "olmo": ("Linear", MATMUL, False),
}


@pytest.mark.parametrize("name", FAMILY_TINY)
def test_family_module_tree(fv_options, name):
    """Layers and projections are found from the module tree; the recompute op follows the family's structure."""
    lm = load_session_model(fv_options, name)
    cls, op, bos = EXPECTED_TREE[lm.info.model_type]
    assert type(lm.info.attn_out[0]).__name__ == cls
    assert lm.info.projection == op
    assert lm.prepend_bos is bos
    assert len(lm.info.layer_names) == lm.info.n_layers


def test_loading_rules_table():
    """The reference loader's rules, from the model type (and Llama's size words, as the reference reads them)."""
    assert reference_rule("gpt2", "gpt2-xl").dtype is None
    assert reference_rule("gptj", "EleutherAI/gpt-j-6b").dtype is None
    assert reference_rule("gpt_neox", "EleutherAI/pythia-6.9b").dtype == torch.float16
    assert reference_rule("gemma", "google/gemma-2b").dtype == torch.float16
    assert reference_rule("olmo", "allenai/OLMo-7B-hf").dtype == torch.float32
    assert reference_rule("llama", "meta-llama/Llama-2-7b-hf").dtype == torch.float32
    assert reference_rule("llama", "meta-llama/Meta-Llama-3.1-8B").dtype == torch.float32
    assert reference_rule("llama", "meta-llama/Llama-2-13b-hf").dtype == torch.float16
    assert reference_rule("llama", "meta-llama/Llama-2-70b-hf").quantization
    assert all(reference_rule(t, "x-7b").attn is None for t in ("gpt2", "gptj", "gpt_neox", "gemma", "llama", "olmo"))


def test_loading_rule_overrides_are_recorded():
    cfg = type("Cfg", (), {"model_type": "gpt_neox"})()
    assert pick_rule(cfg, "tiny-gpt-neox", None).dtype == torch.float16
    rule = pick_rule(cfg, "tiny-gpt-neox", None, dtype="float32", attn="eager")
    assert (rule.dtype, rule.attn) == (torch.float32, "eager") and "--dtype float32" in rule.describe()
    declared = pick_rule(type("Cfg", (), {"model_type": "llama"})(), "tiny-llama", "tiny-llama")
    assert (declared.dtype, declared.attn) == (torch.float32, "eager")


# ---- end to end: the reference loads its own copy with its own loader; fv loads with its default rule ------------
_OWN: dict = {}
OWN_FAMILIES = [n for n in FAMILY_TINY if n != "tiny-gpt2"]  # the reference's loader only loads GPT-2 named 'gpt2-xl'


@pytest.fixture(scope="module", params=OWN_FAMILIES)
def own_run(request, fv_options, reference, tmp_path_factory):
    from fv.model.loading import load_model
    from fv.model.loading_rules import DECLARED
    from fv.model.resolve import resolve_model_path
    from fv.parity.run import LiveSource
    from fv.reference.stages import STAGE_FUNCTIONS, reference_stage_values

    name = request.param
    if name not in _OWN:
        theirs = reference.load_own(resolve_model_path(name), device="cpu")
        # fv's default rule; a tiny model that declares its own dtype is told the reference's choice instead
        over = dict(dtype="float16" if theirs.dtype == torch.float16 else "float32", attn_implementation=theirs.attn_implementation) if name in DECLARED else {}
        mine = load_model(name, "cpu", over.get("dtype"), attn_implementation=over.get("attn_implementation"))
        out = tmp_path_factory.mktemp(f"own-{name}")
        trials = family_trials(mine, out)
        source = LiveSource(
            compute=lambda _lm, tr, params, prefixes, separators: reference_stage_values(reference, theirs, tr, params, prefixes, separators),
            notes=list(reference.notes) + ["the reference loaded its own model with its own loader"], compat=reference.compat,
            description=f"live reference {reference.src_root}, own model")
        params = Params(n_top_heads=N_TOP, edit_layer=EDIT_LAYER, max_trials=N_TRIALS, mode="exact")
        _OWN[name] = (run_parity(mine, trials, params, source, out / "reports", stage_functions=STAGE_FUNCTIONS), theirs)
    return _OWN[name]


@pytest.mark.parametrize("stage", STAGES)
def test_own_loader_stage(own_run, stage):
    run, theirs = own_run
    assert (run.lm.dtype, run.lm.attn_implementation) == (theirs.dtype, theirs.attn_implementation)
    if stage == "injection" and run.injection_error:
        pytest.skip(f"{run.injection_error} (run with --src-compat)")
    result = run.result.stage(stage)
    table = "\n".join(f"  {s.name}: {s.status}, {s.mismatch_count} mismatches, max_abs_diff {s.max_abs_diff}" for s in run.result.stages)
    where = f"{run.lm.name} ({run.lm.dtype}, {run.lm.attn_implementation}; {run.lm.loading_rule}), stage {stage}:\n{table}"
    assert result.mismatch_count == 0 and result.max_abs_diff == 0.0, where


def test_own_loader_refuses_gpt2_in_one_line(reference):
    from fv.errors import FVError
    from fv.model.resolve import resolve_model_path

    with pytest.raises(FVError) as exc:
        reference.load_own(resolve_model_path("tiny-gpt2"))
    assert "gpt2-xl" in str(exc.value) and "\n" not in str(exc.value)
