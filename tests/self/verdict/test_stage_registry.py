"""Each parity stage is declared once (fv/parity/registry.py) and every table about stages is derived from it."""

from __future__ import annotations

import pytest

from fv.parity import compare, diff, golden, stages
from fv.parity.registry import (
    EFFECT_STAGES,
    GOLDEN_ARTIFACTS,
    PER_TRIAL_STAGES,
    REGISTRY,
    STAGE_DIMS,
    STAGE_FILES,
    STAGES,
    stage,
)
from fv.paths import REPO_ROOT

pytestmark = pytest.mark.m2


def test_the_tables_are_the_registrys():
    assert STAGES == ("prompt", "slot", "mean_activations", "indirect_effect", "top_heads", "fv", "injection")
    assert stages.STAGES is STAGES and stages.PER_TRIAL_STAGES is PER_TRIAL_STAGES and diff.DIFF_STAGES is STAGES
    assert compare.STAGE_FILES is STAGE_FILES and compare.STAGE_DIMS is STAGE_DIMS and compare.EFFECT_STAGES is EFFECT_STAGES
    assert golden.GOLDEN_ARTIFACTS is GOLDEN_ARTIFACTS
    assert list(GOLDEN_ARTIFACTS) == ["prompt", "dummy_labels", "slot", "mean_activations", "indirect_effect",
                                      "top_heads", "fv", "injection"]  # the golden tests' order and ids
    assert {s for _k, s in GOLDEN_ARTIFACTS.values()} == set(STAGES)  # every stage is kept as a golden
    for s in REGISTRY:
        assert s.file.endswith(".pt" if s.kind == "tensor" else ".json"), s
        assert all(kind == s.kind for _a, kind in s.goldens), s


def test_the_reference_names_a_function_for_every_stage():
    from fv.reference.stages import STAGE_FUNCTIONS

    assert list(STAGE_FUNCTIONS) == list(STAGES)


def test_an_unknown_stage_is_named_with_the_stages_there_are():
    assert stage("fv").dims == ("d_model",)
    with pytest.raises(KeyError, match="no parity stage 'fvs'; the stages are prompt, slot"):
        stage("fvs")


def test_no_other_module_lists_the_stages():
    """The stage list is written out in fv/parity/registry.py only."""
    spelled = '"prompt", "slot", "mean_activations"'
    hits = [p.relative_to(REPO_ROOT) for p in sorted((REPO_ROOT / "fv").rglob("*.py")) if spelled in p.read_text()]
    assert hits == [], hits


def test_each_kind_of_value_has_one_comparer_and_none_reads_a_stage_name():
    """A stage's values are compared by the comparer of their kind (``compared_as``); the comparers and the diffs
    they use know no stage and no field by name (the scored prompts' fields are ``fv.parity.score_diff``'s rules)."""
    from fv.parity.comparers import COMPARERS

    assert {s.compared_as for s in REGISTRY} <= set(COMPARERS)
    assert stage("top_heads").compared_as == "ranked_heads" and stage("injection").compared_as == "scores"
    import re

    branch = re.compile(r"\b(stage|name|stage\.name)\s*(==|!=|in|not in)\s*[(\"']")
    for module in ("comparers.py", "json_diff.py", "tensor_diff.py"):
        text = (REPO_ROOT / "fv" / "parity" / module).read_text()
        assert not branch.search(text), (module, branch.search(text).group(0))
        named = [n for n in ("logits_sha256", "top_ids", "pred_id", "top_logits") if f'"{n}"' in text]
        assert named == [], (module, named)
