"""The family matrix's set-up (tests/self/runtime/test_families.py, and the family goldens under snapshots/): each
family's fixed trials and the stage parameters, shared by every test that runs a family's tiny model."""

from __future__ import annotations

from pathlib import Path

from fv.parity.stages import Params
from fv.paths import FIXTURES
from fv.runtime.trials import load_trials, make_icl_trials, save_trials

# the family goldens' own set-up: 2 trials, 5 shots, edit layer 3, 5 top heads
N_TRIALS, N_SHOTS, EDIT_LAYER, N_TOP = 2, 5, 3, 5


def family_trials(lm, folder, bos_text: bool | None = None):
    """Fixed trials for this model, with the BOS text in the prompts when ``bos_text`` (default: the upstream
    reference's rule, exactly where the tokenizer adds no BOS). Trials for another rule get another id."""
    upstream = not lm.prepend_bos
    bos = upstream if bos_text is None else bos_text
    raw = make_icl_trials(FIXTURES / "antonym_tiny.json", lm.tokenizer, N_TRIALS, N_SHOTS, seed=0,
                          model_name_for_tokenizer=lm.name, model_prepend_bos=lm.prepend_bos,
                          prepend_bos_token_used=bos, dataset_json_label="antonym_tiny.json")
    path = Path(folder) / f"fixed_trials_antonym_tiny_{lm.name}{'' if bos == upstream else '_bostext' if bos else '_nobostext'}.json"
    save_trials(path, raw)
    return load_trials(path)


def family_params(mode: str) -> Params:
    """The family matrix's stage parameters in ``mode`` (exact or fast)."""
    return Params(n_top_heads=N_TOP, edit_layer=EDIT_LAYER, max_trials=N_TRIALS, mode=mode)
