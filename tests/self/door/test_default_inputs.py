"""A model's default inputs (``fv.model.default_inputs``): what a session or ``fv runtime run`` uses when nobody names
trials, a relation CSV or an edit layer. The default edit layer always fits the model, so a shallow model is never
refused at the door for an option nobody gave."""

from __future__ import annotations

import pytest

from fv.model.default_inputs import default_edit_layer, default_inputs
from fv.model.tiny import TINY_MODELS
from fv.paths import FIXTURES


@pytest.mark.parametrize("model, n_layers, layer", [
    ("tiny-llama-fv", 4, 2),  # its own: where its FVs lift every task
    ("/models/Llama-3.1-8B", 32, 9), ("tiny-llama", 12, 9), ("gpt2-xl", 48, 9),  # the reference's scripts' default
    ("tiny-gpt-j", 6, 2), ("tiny-gemma3-mm", 2, 0), ("a-9-layer-model", 9, 3),  # too shallow for 9: a third
])
def test_the_default_edit_layer_fits_every_model(model, n_layers, layer):
    assert default_edit_layer(model, n_layers) == layer
    assert 0 <= layer < n_layers


def test_the_trained_model_has_its_own_inputs_by_name_and_by_folder():
    folder = FIXTURES / TINY_MODELS["tiny-llama-fv"].stem
    for model in ("tiny-llama-fv", folder, str(folder)):
        inputs = default_inputs(model)
        assert list(inputs.trial_sets) == ["lowercase_first_letter", "next_letter"] and inputs.edit_layer == 2
        assert inputs.relation_csv == FIXTURES / "rule_tasks" / "relation.csv" and len(inputs.universal_tasks) == 5
    other = default_inputs("tiny-llama")
    assert list(other.trial_sets) == ["antonym_tiny", "antonym"] and other.relation_csv == FIXTURES / "relation_tiny.csv"
