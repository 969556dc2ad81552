"""fv's own checks of its trials code (fv checking itself, not the session's inputs): the user's shared GPT-2 trials
file reproduced, a foreign tokenizer named, and properties of slots and trial files on the tiny tokenizer."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fv.errors import FVError
from fv.model.tokenizers import load_tokenizer
from fv.paths import FIXTURES
from fv.runtime.prompts import make_prompt_data, token_meta_labels
from fv.runtime.slots import dummy_labels, full_idx_map, slot_maps
from fv.runtime.trials import TOKEN_KEYS, load_trials, make_icl_trials, require_tokenizer_agrees, save_trials, verify_token_ids
from tests.support.trials_checks import mismatch_report

pytestmark = pytest.mark.m0


def test_shared_trials_file_reproduced(fv_model, fixture_data):
    """Everything the tokenizer does not decide equals the user's real file, key order included."""
    ref = json.loads((fixture_data / "fixed_trials_antonym_t10_s10_seed0.json").read_text())
    made = make_icl_trials(fixture_data / "antonym.json", fv_model.tokenizer, 10, 10, 0, model_name_for_tokenizer="gpt2",
                           model_prepend_bos=False, dataset_json_label=ref["meta"]["dataset_json"])
    mismatches = [f"meta.{k}" for k in ref["meta"] if ref["meta"][k] != made["meta"][k]]
    mismatches += [f"splits.{k}" for k in ref["splits"] if ref["splits"][k] != made["splits"][k]]
    for a, b in zip(ref["trials"], made["trials"]):
        if list(a) != list(b):
            mismatches.append(f"trial {a['trial_id']}: keys {list(a)} vs {list(b)}")
        mismatches += [f"trial {a['trial_id']}: {k}" for k in a if k not in TOKEN_KEYS and a[k] != b.get(k)]
    assert len(ref["trials"]) == len(made["trials"])
    assert len(mismatches) == 0, mismatch_report(mismatches)


def test_foreign_tokenizer_named(fv_model, fixture_data):
    """The user's GPT-2 file disagrees with a tiny tokenizer: the error names the trial and both ids."""
    ft = load_trials(fixture_data / "fixed_trials_antonym_t10_s10_seed0.json")
    bad = verify_token_ids(ft, fv_model.tokenizer)
    assert len(bad) == len(ft.trials)
    with pytest.raises(FVError, match=r"trial 0 \(index 0\): answer_ids in file \[3424\], tokenizer gives \[\d+"):
        require_tokenizer_agrees(ft, fv_model.tokenizer)


# --- properties -------------------------------------------------------------------------------------------------

_TINY_TOK = None


def tiny_tokenizer():
    global _TINY_TOK
    if _TINY_TOK is None:
        _TINY_TOK = load_tokenizer(FIXTURES / "tiny_tokenizer")
    return _TINY_TOK


words = st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=14)
pairs = st.lists(st.tuples(words, words), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(examples=pairs, query=st.tuples(words, words))
def test_slots_cover_every_dummy_slot(examples, query):
    tok = tiny_tokenizer()
    pd_ = make_prompt_data(examples, query)
    labels, text = token_meta_labels(pd_, tok, prepend_bos=True)
    n_tokens = len(tok(text).input_ids)
    dummy = dummy_labels(len(examples), tok, True)
    idx_map, idx_avg = slot_maps(labels, dummy)
    assert len(labels) == n_tokens
    assert sorted(set(idx_map.values())) == list(range(len(dummy)))
    assert sorted(full_idx_map(idx_map, idx_avg)) == list(range(n_tokens))
    assert labels[-1][2] == "query_predictive_token"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(st.tuples(words, words), min_size=8, max_size=30), seed=st.integers(0, 2**16), shots=st.integers(1, 4))
def test_trials_round_trip(tmp_path_factory, rows, seed, shots):
    d = tmp_path_factory.mktemp("rt")
    data = d / "ds.json"
    data.write_text(json.dumps([{"input": a, "output": b} for a, b in rows]))
    raw = make_icl_trials(data, tiny_tokenizer(), 3, shots, seed)
    path = save_trials(d / "ft.json", raw)
    assert load_trials(path).raw == raw
    assert json.loads(Path(path).read_text()) == raw
