"""The target check of M0 (fv/runtime/trials.py, "the target ids"): a trials file (or a reference) whose target ids were taken as
``tokenizer(target).input_ids[0]`` instead of ``ids(prompt + target)[len(ids(prompt)):]`` is named in words.

The fork-like file is made on the tiny Llama (whose tokenizer adds BOS) exactly as such a fork writes it: every
trial's ``answer_ids`` the target tokenized alone, ``first_token_id``/``target_first_token_id`` its first id (BOS).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fv.model.tiny import ensure_tiny_model
from fv.model.tokenizers import load_tokenizer
from fv.paths import FIXTURES, REPO_ROOT
from fv.runtime.trials import (
    BOS_CAUSE,
    CONTINUATION_CAUSE,
    LONE_SPACE_CAUSE,
    check_target_ids,
    load_trials,
    make_icl_trials,
    save_trials,
    verify_token_ids,
)
from fv.runtime.trials import target_cause as cause
from fv.runtime.trials import target_summary as summary


@pytest.fixture(scope="module")
def llama_tok():
    return load_tokenizer(ensure_tiny_model("tiny-llama"))


def _fork_like(tok, folder: Path) -> Path:
    """A trials file as a fork writes it: target ids from ``tokenizer(target)["input_ids"]``."""
    raw = make_icl_trials(FIXTURES / "antonym_tiny.json", tok, 3, 5, seed=0, model_name_for_tokenizer="tiny-llama",
                          model_prepend_bos=True, prepend_bos_token_used=False, dataset_json_label="antonym_tiny.json")
    for t in raw["trials"]:
        ids = list(tok(t["target_str"])["input_ids"])
        t["answer_ids"], t["first_token_id"], t["target_first_token_id"] = ids, ids[0], ids[0]
    path = folder / "fixed_trials_antonym_tiny_fork_tiny-llama.json"
    save_trials(path, raw)  # a consistent file: it loads, only its ids are wrong
    return path


def test_fork_trials_file_is_named_bos(llama_tok, tmp_path):
    ft = load_trials(_fork_like(llama_tok, tmp_path))
    assert all(t.first_token_id == llama_tok.bos_token_id for t in ft.trials)
    problems = check_target_ids(ft.trials, llama_tok, ft.raw["trials"])
    # three fields per trial, each named with the cause
    assert len(problems) == 3 * len(ft.trials)
    assert {p.side for p in problems} == {"file answer_ids", "file first_token_id", "file target_first_token_id"}
    assert all(p.cause.startswith(BOS_CAUSE) for p in problems), [str(p) for p in problems]
    assert BOS_CAUSE in summary(problems)
    # the token-id check every door uses (fv verify-trials, the preflight, M0's token_ids test) names it too
    bad = verify_token_ids(ft, llama_tok)
    assert bad and all(BOS_CAUSE in str(b) for b in bad)


def test_reference_ids_are_checked(llama_tok, tmp_path):
    """The reference's target id (what its get_answer_id gives, first id) is held to the same rule."""
    raw = make_icl_trials(FIXTURES / "antonym_tiny.json", llama_tok, 2, 5, seed=0, model_name_for_tokenizer="tiny-llama",
                          model_prepend_bos=True, prepend_bos_token_used=False, dataset_json_label="antonym_tiny.json")
    save_trials(tmp_path / "ft.json", raw)
    ft = load_trials(tmp_path / "ft.json")
    assert check_target_ids(ft.trials, llama_tok, ft.raw["trials"]) == []
    good = {t.key: list(t.answer_ids[:1]) for t in ft.trials}
    assert check_target_ids(ft.trials, llama_tok, ft.raw["trials"], good) == []
    forked = {t.key: [llama_tok.bos_token_id] for t in ft.trials}
    problems = check_target_ids(ft.trials, llama_tok, ft.raw["trials"], forked)
    assert [p.side for p in problems] == ["reference's target id"] * 2 and all(p.cause.startswith(BOS_CAUSE) for p in problems)
    other = {t.key: [t.answer_ids[0] + 1] for t in ft.trials}
    problems = check_target_ids(ft.trials, llama_tok, None, other)
    assert problems and all(p.cause.startswith(CONTINUATION_CAUSE) for p in problems)


class _MetaspaceStub:
    """A SentencePiece-like tokenizer: " cold" alone is ['▁', 'cold'], after "A:" it is ['▁cold']; no BOS."""

    bos_token_id = None
    bos_token = None
    vocab = {"▁": 5, "cold": 6, "▁cold": 7, "A:": 8}

    def __call__(self, text, **_kw):
        ids = [8] if text.startswith("A:") else []
        rest = text[2:] if text.startswith("A:") else text
        if rest == " cold":
            ids += [7] if text.startswith("A:") else [5, 6]
        return type("Enc", (), {"input_ids": ids, "__getitem__": lambda s, k: ids})()

    def convert_ids_to_tokens(self, i):
        return {v: k for k, v in self.vocab.items()}[i]


def test_lone_metaspace_is_named():
    tok = _MetaspaceStub()
    alone = tok(" cold")["input_ids"]
    assert alone == [5, 6]
    text = cause(tok, alone[:1], [7])
    assert text.startswith(LONE_SPACE_CAUSE), text
    # a lone ▁ that IS the prompt's continuation (digits split after a space) is no mismatch: nothing to name
    assert cause(tok, [7], [7]).startswith(CONTINUATION_CAUSE)  # only called on mismatches; a match reads as such


def test_verify_trials_names_it(llama_tok, tmp_path, capsys):
    from fv.cli import main

    path = _fork_like(llama_tok, tmp_path)
    rc = main(["verify-trials", str(path), "--tokenizer", "tiny-llama"])
    out = capsys.readouterr().out
    assert rc == 1 and BOS_CAUSE in out, out


@pytest.mark.slow
def test_m0_gate_names_bos(llama_tok, tmp_path):
    """``pytest -m m0 --fixed-trials FORK_FILE`` on the tiny Llama fails in words: the session stops at its start
    (the trials preflight applies the same check) naming the BOS, not "another tokenizer"."""
    path = _fork_like(llama_tok, tmp_path)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "-q", "-m", "m0",
           str(REPO_ROOT / "tests" / "parity" / "test_m0_fixed_trials.py"), "-k", "target_ids or token_ids",
           "--fv-model", "tiny-llama", "--fixed-trials", str(path), "--fv-out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert BOS_CAUSE in out and "another tokenizer" not in out, out[-3000:]


def test_m0_target_ids_test_fails_naming_bos(llama_tok, tmp_path, monkeypatch):
    """M0's own check on the fork-like file (``assert_target_ids``, what M0's ``test_target_ids`` asserts, called
    without a reference: the file's ids)."""
    from types import SimpleNamespace

    from tests.support.trials_checks import assert_target_ids

    monkeypatch.delenv("FV_SRC_ROOT", raising=False)
    ft = load_trials(_fork_like(llama_tok, tmp_path))
    opts = SimpleNamespace(src_root=None, baukit_root=None, src_compat=False, src_python=None, rootdir=tmp_path)
    with pytest.raises(AssertionError) as e:
        assert_target_ids(opts, llama_tok, ft)
    first = str(e.value).splitlines()[0]
    assert first.startswith("target ids: 9 mismatch(es) in 3 trial(s)") and BOS_CAUSE in first, str(e.value)[:2000]
