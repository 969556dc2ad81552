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

from fv.model.tiny import FAMILY_TINY
from fv.model.tree import MATMUL
from fv.parity.run import compare_with, run_parity
from fv.parity.stages import STAGES, Params, fv_stage_values
from fv.paths import FIXTURES
from fv.pytest_plugin import load_session_model
from fv.runtime.trials import load_trials, make_icl_trials, save_trials

pytestmark = [pytest.mark.m2, pytest.mark.tiny, pytest.mark.src]

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
