"""M0: fixed trials are made exactly as the user's files are, and prompts and slot maps equal the reference's."""

from __future__ import annotations

import pytest

from fv.paths import FIXTURES
from fv.pytest_plugin import trials_for
from fv.runtime.prompts import has_bos_text, prompt_string, token_meta_labels
from fv.runtime.slots import dummy_labels, full_idx_map, slot_maps
from fv.runtime.trials import load_trials, verify_token_ids
from tests.support.trials_checks import assert_target_ids, mismatch_report

pytestmark = pytest.mark.m0

# sentiment_tiny: inputs that end in a full stop, which Llama 3 merges with the separator ('.\n' is one token)
M0_DATASETS = ("antonym_tiny", "antonym", "country-capital", "english-french", "sentiment_tiny")
N_TRIALS = 10


@pytest.fixture(scope="session", params=M0_DATASETS)
def m0_trials(request, fv_options, fv_model):
    if fv_options.fixed_trials:
        if request.param != "antonym_tiny":
            pytest.skip("--fixed-trials given: only that file is checked")
        return load_trials(fv_options.fixed_trials)
    if request.param in ("antonym_tiny", "sentiment_tiny"):
        return trials_for(fv_options, fv_model, FIXTURES / f"{request.param}.json")
    return trials_for(fv_options, fv_model, FIXTURES / "data" / f"{request.param}.json")


@pytest.fixture(params=range(N_TRIALS), ids=lambda i: f"trial{i}")
def m0_trial(request, m0_trials):
    if request.param >= len(m0_trials.trials):
        pytest.skip(f"{m0_trials.id} has {len(m0_trials.trials)} trials")
    return m0_trials.trials[request.param]


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
    assert len(mismatches) == 0, mismatch_report(mismatches)


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
    assert len(mismatches) == 0, mismatch_report(mismatches)


def test_token_ids_verified(fv_model, m0_trials):
    bad = verify_token_ids(m0_trials, fv_model.tokenizer)
    assert len(bad) == 0, mismatch_report([str(b) for b in bad])


def test_target_ids(fv_options, fv_model, m0_trials):
    """The target ids the trials file states (``answer_ids``, ``first_token_id``, ``target_first_token_id``) and the
    one the reference scores (its ``get_answer_id`` on the trial's prompt, first id) are ``ids(prompt + target)``
    minus ``ids(prompt)``: a fork's ``tokenizer(target).input_ids[0]`` (BOS, or a lone ▁ on SentencePiece) makes
    the indirect effect about 0 everywhere on both sides, which no later gate can see. Each mismatch is named."""
    assert_target_ids(fv_options, fv_model.tokenizer, m0_trials)
