"""M2 on every model family the reference supports: each family's tiny model, fv against the live reference in
both modes (own: the reference loads its own copy with its own loader, as its users run it; shared: its functions
handed fv's model object), every stage bit for bit; without the reference, against the family's goldens (M1).

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
from fv.parity.golden import GOLDEN_ARTIFACTS
from fv.parity.run import compare_with, run_parity
from fv.parity.stages import STAGES, fv_stage_values
from fv.parity.tensor_diff import allclose
from fv.parity.tolerance import tolerance_for
from fv.pytest_plugin import assert_golden, load_session_model
from fv.runtime.prompts import has_bos_text
from tests.support.families import family_params, family_trials
from tests.support.stage_parity import assert_stage_matches

pytestmark = [pytest.mark.m2, pytest.mark.tiny]  # the plugin adds `src` to the tests that need the reference

# (model, mode): the end-to-end mode ("own": the reference loads its own copy with its own loader) and the shared
# mode (its functions on fv's model object). The reference's loader cannot load GPT-2 unless it is named exactly
# 'gpt2-xl' (test_own_loader_refuses_gpt2_in_one_line), so GPT-2 runs shared only.
FAMILY_MODES = [(n, m) for n in FAMILY_TINY for m in ("own", "shared") if not (n == "tiny-gpt2" and m == "own")]


@pytest.fixture(scope="module", params=FAMILY_MODES, ids=lambda p: f"{p[0]}-{p[1]}")
def family_run(request, fv_options, tmp_path_factory, family_runs):
    """fv (loaded by its default rule, the reference's) against the live reference in one of the two modes, or,
    without the reference, against the family's goldens (the shared runs only: goldens hold one reference run).
    Made once per session (``family_runs``)."""
    from fv.pytest_plugin import get_reference, reference_own_model
    from fv.reference.stages import STAGE_FUNCTIONS, live_source

    name, mode = request.param
    ref = get_reference(fv_options)
    if isinstance(ref, str) and (mode == "own" or fv_options.require_src):
        pytest.fail(ref, pytrace=False) if fv_options.require_src else pytest.skip(ref)

    def make():
        lm = load_session_model(fv_options, name)
        out = tmp_path_factory.mktemp(f"family-{name}-{mode}")
        theirs = None if isinstance(ref, str) else reference_own_model(ref, lm) if mode == "own" else lm
        # trials made for the BOS rule of the src in use (upstream's, or a fork's)
        trials = family_trials(lm, out, None if theirs is None else ref.bos_text_rule(theirs)[0])
        source = None if theirs is None else live_source(ref, theirs if mode == "own" else None)
        return run_parity(lm, trials, family_params(fv_options.mode), source, out / "reports", stage_functions=STAGE_FUNCTIONS)

    return family_runs.get((name, mode), make)


@pytest.mark.m1
@pytest.mark.parametrize("artifact", list(GOLDEN_ARTIFACTS))
def test_family_golden(family_run, snapshot, request, artifact):
    """Each family's goldens, written from the live reference by ``--snapshot-update`` (the shared run: the same
    numbers as the own run, which the stage tests prove)."""
    if family_run.result.meta.get("src_model_mode") == "own":
        pytest.skip("goldens are kept from the shared run of the same model and trials")
    assert_golden(family_run, artifact, snapshot, request.config.option.update_snapshots)


@pytest.mark.parametrize("stage", STAGES)
def test_family_stage(family_run, stage):
    assert_stage_matches(family_run, stage, f"projection {family_run.lm.info.projection}")


def test_family_bos_rule_recorded(family_run):
    """The report records the src's BOS rule, which the trials follow: upstream's (the BOS text exactly where the
    tokenizer adds none) or a fork's (never)."""
    run = family_run
    meta = run.trials.meta
    assert meta["model_prepend_bos"] == run.lm.prepend_bos
    assert run.result.meta["tokenizer_prepends_bos"] == run.lm.prepend_bos
    if run.source != "reference":
        pytest.skip("the BOS rule is the live src's")
    rule = run.result.meta["src_bos_rule"]
    expected = (not run.lm.prepend_bos) if rule.startswith("upstream") else False if "never" in rule else None
    assert expected is not None, rule
    assert meta["prepend_bos_token_used"] is expected and has_bos_text(run.trials.trials[0].prompt_data_clean) is expected


def test_family_wrong_bos_trials_refused(family_run, fv_options, tmp_path):
    """Trials made for the other BOS rule are refused before any stage runs, in one line naming the fix."""
    from fv.errors import FVError
    from fv.pytest_plugin import get_reference, reference_own_model
    from fv.reference.stages import live_source

    run = family_run
    if run.source != "reference":
        pytest.skip("needs the live src")
    ref = get_reference(fv_options)
    own = run.result.meta["src_model_mode"] == "own"
    source = live_source(ref, reference_own_model(ref, run.lm) if own else None)
    wrong = family_trials(run.lm, tmp_path, bos_text=not run.trials.meta["prepend_bos_token_used"])
    with pytest.raises(FVError) as exc:
        source.check(run.lm, wrong)
    msg = str(exc.value)
    assert "\n" not in msg and "--prepend-bos-token-used" in msg and str(wrong.path) in msg, msg


def test_family_bias_is_needed(family_run):
    """Where the reference keeps the projection bias, recomputing without it is caught by the gate."""
    run = family_run
    info = run.lm.info
    if run.source != "reference" or run.result.meta.get("src_model_mode") == "own":
        pytest.skip("checked once per family, against the live reference on the shared model")
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
    if run.result.meta.get("src_model_mode") == "own":
        pytest.skip("fv's side of the own run is the same as of the shared run")
    subset = run.trials.subset(run.params.max_trials)
    params = dataclasses.replace(run.params, mode="fast")
    fast = fv_stage_values(run.lm, subset, params, run.trials.meta.get("prefixes"), run.trials.meta.get("separators"))
    exact = run.fv.values["indirect_effect"]
    tol = tolerance_for(run.lm.dtype, exact=False)  # the fast path sums in another order: rounding of the model's dtype
    assert allclose(tol.for_stage("indirect_effect"), fast.values["indirect_effect"], exact), (fast.values["indirect_effect"] - exact).abs().max()


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
    assert pick_rule(cfg, "tiny-gpt-neox").dtype == torch.float16
    rule = pick_rule(cfg, "tiny-gpt-neox", dtype="float32", attn="eager")
    assert (rule.dtype, rule.attn) == (torch.float32, "eager") and "--dtype float32" in rule.describe()


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-llama3tok"])
def test_tiny_llama_loads_as_the_reference_loads_an_8b(fv_options, name):
    """The default tiny models follow the reference's Llama rule like any folder: float32 (their folders carry
    '8b', as Llama-3.1-8B's name does) and the transformers default attention."""
    lm = load_session_model(fv_options, name)
    if fv_options.dtype not in ("auto", "") or fv_options.attn not in ("auto", ""):
        pytest.skip("--fv-dtype/--fv-attn-implementation override the rule")
    assert "8b" in lm.path.name and lm.dtype == torch.float32
    assert lm.attn_implementation == "sdpa" and "reference rule for Llama with '7b'/'8b'" in lm.loading_rule


def test_own_loader_refuses_gpt2_in_one_line(reference):
    from fv.errors import FVError
    from fv.model.resolve import resolve_model_path

    with pytest.raises(FVError) as exc:
        reference.load_own(resolve_model_path("tiny-gpt2"))
    assert "gpt2-xl" in str(exc.value) and "\n" not in str(exc.value)
