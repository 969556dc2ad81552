"""M0: fixed trials are made exactly as the user's files are, and prompts and slot maps equal the reference's."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fv.errors import FVError
from fv.model.tokenizers import load_tokenizer
from fv.runtime.prompts import dummy_labels, full_idx_map, has_bos_text, make_prompt_data, prompt_string, slot_maps, token_meta_labels
from fv.pytest_plugin import trials_for
from fv.paths import FIXTURES
from fv.runtime.trials import TOKEN_KEYS, load_trials, make_icl_trials, require_tokenizer_agrees, save_trials, verify_token_ids

pytestmark = pytest.mark.m0

M0_DATASETS = ("antonym_tiny", "antonym", "country-capital", "english-french")
N_TRIALS = 10


@pytest.fixture(scope="session", params=M0_DATASETS)
def m0_trials(request, fv_options, fv_model):
    if fv_options.fixed_trials:
        if request.param != "antonym_tiny":
            pytest.skip("--fixed-trials given: only that file is checked")
        return load_trials(fv_options.fixed_trials)
    if request.param == "antonym_tiny":
        return trials_for(fv_options, fv_model, FIXTURES / "antonym_tiny.json")
    return trials_for(fv_options, fv_model, FIXTURES / "data" / f"{request.param}.json")


@pytest.fixture(params=range(N_TRIALS), ids=lambda i: f"trial{i}")
def m0_trial(request, m0_trials):
    if request.param >= len(m0_trials.trials):
        pytest.skip(f"{m0_trials.id} has {len(m0_trials.trials)} trials")
    return m0_trials.trials[request.param]


def _report(mismatches: list[str]) -> str:
    return f"mismatch_count={len(mismatches)}\n" + "\n".join(mismatches[:40])


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
    assert len(mismatches) == 0, _report(mismatches)


@pytest.mark.parametrize("side", ["clean", "corrupted"])
def test_prompt_parity(reference, fv_model, m0_trials, m0_trial, side):
    pd_ = m0_trial.prompt_data_clean if side == "clean" else m0_trial.prompt_data_corrupted
    shuffle = None if side == "clean" else [e["output"] for e in m0_trial.prompt_data_corrupted["examples"]]
    ref_pd = reference.prompt_data(m0_trial.prompt_data_clean, reference.bos_text_rule(fv_model)[0], shuffle_to=shuffle)
    tok = fv_model.tokenizer
    ours, theirs = prompt_string(pd_), reference.prompt_utils.create_prompt(ref_pd)
    stored = m0_trial.clean_prompt_str if side == "clean" else m0_trial.corrupted_prompt_str
    mismatches = []
    if ours != theirs:
        mismatches.append(f"prompt string: fv {ours!r} src {theirs!r}")
    if stored != theirs:
        mismatches.append(f"stored {side}_prompt_str differs from src: {stored!r} vs {theirs!r}")
    if list(tok(ours).input_ids) != list(tok(theirs).input_ids):
        mismatches.append("token ids differ")
    if pd_ != ref_pd:
        mismatches.append(f"prompt data: fv {pd_} src {ref_pd}")
    if side == "clean":
        src_ids = reference.answer_ids(tok, theirs, ref_pd["query_target"]["output"])
        if list(m0_trial.answer_ids) != src_ids:
            mismatches.append(f"answer ids: file {list(m0_trial.answer_ids)} src {src_ids}")
    assert len(mismatches) == 0, _report(mismatches)


@pytest.mark.parametrize("side", ["clean", "corrupted"])
def test_slot_parity(reference, fv_model, m0_trials, m0_trial, side):
    tok, bos = fv_model.tokenizer, fv_model.prepend_bos
    meta = m0_trials.meta
    mc = reference.model_config(fv_model)
    n = len(m0_trial.prompt_data_clean["examples"])
    src_dummy = reference.dummy_labels(tok, mc, n, meta["prefixes"], meta["separators"])
    dummy = dummy_labels(n, tok, bos, meta["prefixes"], meta["separators"], bos_text=has_bos_text(m0_trial.prompt_data_clean))
    pd_ = m0_trial.prompt_data_clean if side == "clean" else m0_trial.prompt_data_corrupted
    shuffle = None if side == "clean" else [e["output"] for e in m0_trial.prompt_data_corrupted["examples"]]
    src_pd = reference.prompt_data(m0_trial.prompt_data_clean, reference.bos_text_rule(fv_model)[0], shuffle_to=shuffle)
    src = reference.slots(src_pd, tok, mc, src_dummy)
    labels, _ = token_meta_labels(pd_, tok, prepend_bos=bos)
    idx_map, idx_avg = slot_maps(labels, dummy)
    mismatches = []
    if [(int(p), l) for p, l in src_dummy] != dummy:
        mismatches.append("dummy labels differ")
    src_labels = [(int(p), t, l) for p, t, l in src["token_labels"]]
    for i, (a, b) in enumerate(zip(src_labels, labels)):
        if a != b:
            mismatches.append(f"token {i}: src {a} fv {b}")
    if len(src_labels) != len(labels):
        mismatches.append(f"label count: src {len(src_labels)} fv {len(labels)}")
    for name, s, f in (("idx_map", src["idx_map"], idx_map), ("idx_map_full", src["idx_map_full"], full_idx_map(idx_map, idx_avg)),
                       ("idx_avg", src["idx_avg"], idx_avg)):
        s = {(int(k) if not isinstance(k, str) else k): (tuple(int(x) for x in v) if isinstance(v, tuple) else int(v)) for k, v in s.items()}
        for k in sorted(set(s) | set(f), key=str):
            if s.get(k) != f.get(k):
                mismatches.append(f"{name}[{k}]: src {s.get(k)} fv {f.get(k)}")
    assert len(mismatches) == 0, _report(mismatches)


def test_token_ids_verified(fv_model, m0_trials):
    bad = verify_token_ids(m0_trials, fv_model.tokenizer)
    assert len(bad) == 0, _report([str(b) for b in bad])


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
