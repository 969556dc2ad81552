"""M3: the reference dump holds every (trial_id, trial_idx) of the compared trials once, with the FV and top heads."""

from __future__ import annotations

import json

import pytest

from fv.io import load_tensor_file

pytestmark = pytest.mark.m3


def test_dump_keys_complete_and_unique(reference_dir, fixed_trials, fv_options):
    dump = json.loads((reference_dir / "src_reference_dump.json").read_text())
    keys = [(t["trial_id"], t["trial_idx"]) for t in dump["trials"]]
    wanted = [t.key for t in fixed_trials.subset(fv_options.max_trials)]
    missing = [k for k in wanted if k not in keys]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    assert len(missing) == 0 and len(duplicated) == 0, f"missing {missing}, duplicated {duplicated}"
    assert len(keys) == len(wanted)
    for t in dump["trials"]:
        assert set(t) >= {"clean_prompt_str", "corrupted_prompt_str", "clean_input_ids", "target_id", "slots", "injection"}
        assert set(t["injection"]) == {"zero_shot", "shuffled"}


def test_dump_companions(reference_dir, fv_model, fv_options):
    fv = load_tensor_file(reference_dir / "src_fv.pt")
    assert tuple(fv.shape) == (fv_model.info.d_model,)
    heads = json.loads((reference_dir / "top_heads_src.json").read_text())
    assert len(heads) == fv_options.n_top_heads
    assert all(len(h) == 3 for h in heads)
