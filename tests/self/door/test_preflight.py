"""The preflights (fv/parity/preflight.py): each stops a real pytest session at its start in one line, exit code 4,
and ``fv doctor`` / ``fv make-trials`` / ``fv verify-trials`` say the same words. Also: a stage summary names an
all-zero side, and fv and the reference label Llama 3's merged ``.\\n`` tokens alike (with the M0 count of them).

The Mistral and wide Gemma 2 models here are built in the test (random init, tiny, saved to a temp folder): they
stand for the families the reference lacks, and need nothing from fv.model.tiny.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fv.model.resolve import resolve_model_path
from fv.model.tokenizers import load_tokenizer
from fv.paths import FIXTURES, REPO_ROOT
from fv.runtime.trials import load_trials, make_icl_trials, save_trials

pytestmark = [pytest.mark.tiny, pytest.mark.slow]

SENTIMENT = FIXTURES / "sentiment_tiny.json"


def _pytest(src_root: Path | None, baukit: str | None, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """A fresh pytest session that only collects (the preflights run before collection ends)."""
    env = {k: v for k, v in os.environ.items() if k not in ("FV_SRC_ROOT", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT",
                                                            "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "pytest", str(REPO_ROOT / "tests" / "parity" / "test_m0_fixed_trials.py"), "--collect-only", "-q",
           "-p", "no:xdist", "-p", "no:randomly", "-p", "no:cacheprovider", "--fv-out", str(cwd / "out"), "--edit-layer", "1", *args]
    if src_root is not None:
        cmd += ["--src-root", str(src_root)]
    if baukit:
        cmd += ["--baukit-root", baukit]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)


def _stopped(r: subprocess.CompletedProcess, check: str, n: int = 1) -> list[str]:
    """The session stopped at its door: exit 4, no traceback, ``n`` lines, each from the preflight ``check``."""
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith(("ERROR: fv: ", "fv: "))]
    assert r.returncode == 4, f"exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len(lines) == n and all(f"preflight {check}: " in ln for ln in lines), r.stderr[-3000:]
    return [ln.split("preflight ", 1)[1] for ln in lines]


def _trials(path: Path, tokenizer_name: str, bos_text: bool, label: str | None = None, dataset: Path = SENTIMENT):
    tok = load_tokenizer(resolve_model_path(tokenizer_name))
    raw = make_icl_trials(dataset, tok, 3, 4, 0, model_name_for_tokenizer=label or tokenizer_name,
                          model_prepend_bos=not bos_text, prepend_bos_token_used=bos_text)
    save_trials(path, raw)
    return load_trials(path)


def _tiny_model(dest: Path, kind: str) -> Path:
    """A random tiny Mistral (sliding window) or Gemma 2 whose heads x head_dim != hidden, with tiny-llama's
    tokenizer, saved to ``dest``. Local to these tests."""
    from transformers import AutoModelForCausalLM, Gemma2Config, MistralConfig

    if (dest / "config.json").is_file():
        return dest
    tok = load_tokenizer(resolve_model_path("tiny-llama"))
    common = dict(vocab_size=len(tok), intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    cfg = (MistralConfig(hidden_size=32, sliding_window=16, **common) if kind == "mistral"
           else Gemma2Config(hidden_size=48, head_dim=16, sliding_window=16, **common))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(str(dest))
    tok.save_pretrained(str(dest))
    return dest


@pytest.fixture(scope="module")
def src(reference, fv_options):
    return reference.src_root, fv_options.baukit_root or os.environ.get("FV_BAUKIT_ROOT")


# ---- a: trials made with another tokenizer ------------------------------------------------------------------
def test_trials_from_another_tokenizer_stop_the_session(src, tmp_path):
    ft = _trials(tmp_path / "ft.json", "tiny-llama3tok", False)
    r = _pytest(*src, "--fv-model", "tiny-llama", "--fixed-trials", str(ft.path), cwd=tmp_path)
    (line,) = _stopped(r, "trials tokenizer")
    assert "made with another tokenizer ('tiny-llama3tok'" in line and "not 'tiny-llama'" in line
    assert "3 of 3 trials' answer ids differ" in line
    assert "`fv trials make --dataset " in line and "--tokenizer tiny-llama --prepend-bos-token-used false" in line


def test_token_ids_decide_not_names(src, tmp_path):
    """A file whose model_name_for_tokenizer names another model, made with this model's tokenizer, passes."""
    ft = _trials(tmp_path / "ft.json", "tiny-llama", False, label="meta-llama/Some-Other-Name")
    r = _pytest(*src, "--fv-model", "tiny-llama", "--fixed-trials", str(ft.path), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


# ---- b: the BOS text on a tokenizer that adds its own BOS ---------------------------------------------------
def test_bos_text_on_a_bos_tokenizer_stops_the_session(src, tmp_path):
    ft = _trials(tmp_path / "ft.json", "tiny-llama3tok", True)
    r = _pytest(*src, "--fv-model", "tiny-llama3tok", "--fixed-trials", str(ft.path), cwd=tmp_path)
    (line,) = _stopped(r, "BOS text")
    assert "start with the BOS text '<|endoftext|>' (prepend_bos_token_used true)" in line
    assert "adds its own BOS '<|begin_of_text|>'" in line and "--prepend-bos-token-used false" in line


def test_bos_text_refused_by_make_and_verify_trials_in_the_same_words(src, tmp_path, capsys):
    from fv.cli import main

    out = tmp_path / "made.json"
    rc = main(["make-trials", "--dataset", str(SENTIMENT), "--tokenizer", "tiny-llama3tok", "--prepend-bos-token-used", "true",
               "--n-trials", "3", "--n-shots", "4", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 4 and not out.exists(), err
    assert len(err) == 1 and err[0].startswith("fv make-trials: error: preflight BOS text: "), err
    ft = _trials(tmp_path / "ft.json", "tiny-llama3tok", True)
    rc = main(["verify-trials", str(ft.path), "--tokenizer", "tiny-llama3tok"])
    cap = capsys.readouterr()
    assert rc == 4 and cap.err.startswith("fv verify-trials: error: preflight BOS text: "), cap.err
    session = _stopped(_pytest(*src, "--fv-model", "tiny-llama3tok", "--fixed-trials", str(ft.path), cwd=tmp_path), "BOS text")[0]
    assert cap.err.strip().split("preflight ", 1)[1] == session  # the same words


# ---- c: no BOS text where the src in use writes it ------------------------------------------------------------
def test_no_bos_text_where_upstream_writes_it_stops_the_session(src, tmp_path):
    ft = _trials(tmp_path / "ft.json", "tiny-olmo", False)
    r = _pytest(*src, "--fv-model", "tiny-olmo", "--fixed-trials", str(ft.path), cwd=tmp_path)
    (line,) = _stopped(r, "src BOS rule")
    assert f"{src[0]} writes the BOS text '<|endoftext|>'" in line and "lack it (prepend_bos_token_used false)" in line
    assert "upstream rule" in line and "--prepend-bos-token-used true" in line


def test_a_fork_that_never_writes_the_bos_text_is_silent(src, tmp_path):
    from tests.support.forks import build_fork

    fork = build_fork(src[0], tmp_path / "fork")
    ft = _trials(tmp_path / "ft.json", "tiny-olmo", False)
    r = _pytest(fork, src[1], "--fv-model", "tiny-olmo", "--fixed-trials", str(ft.path), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def test_doctor_says_the_session_words(src, tmp_path, capsys):
    from fv.cli import main

    ft = _trials(tmp_path / "ft.json", "tiny-llama3tok", False)
    rc = main(["doctor", "--model", "tiny-llama", "--fixed-trials", str(ft.path), "--src-root", str(src[0]), "--device", "cpu"]
              + (["--baukit-root", src[1]] if src[1] else []))
    out = capsys.readouterr().out
    doctor = [ln for ln in out.splitlines() if ln.startswith("FAIL preflight trials tokenizer: ")]
    assert rc == 1 and len(doctor) == 1, out
    session = _stopped(_pytest(*src, "--fv-model", "tiny-llama", "--fixed-trials", str(ft.path), cwd=tmp_path), "trials tokenizer")[0]
    assert doctor[0].removeprefix("FAIL preflight ") == session


# ---- the gate on a model the reference cannot run ------------------------------------------------------------
def test_models_the_reference_lacks_stop_the_session_one_line_each(src, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("families")
    mistral, gemma2 = _tiny_model(tmp / "tiny-mistral", "mistral"), _tiny_model(tmp / "tiny-gemma2-wide", "gemma2")
    r = _pytest(*src, "--fv-model", f"{mistral},{gemma2},tiny-gpt2", cwd=tmp)
    by_model = {ln.split(" cannot run ", 1)[1].split(" ", 1)[0]: ln for ln in _stopped(r, "reference family", 3)}
    m, g, gpt2 = by_model[str(mistral)], by_model[str(gemma2)], by_model["tiny-gpt2"]
    assert "(mistral)" in m and "its loader (utils/model_utils.py: load_gpt_model_and_tokenizer) has no branch" in m
    assert "its hook code paths" in m and "A fork with a mistral branch" in m
    assert "(gemma2)" in g and "resid_dim // n_heads = 48 // 4 = 12" in g and "4 x 16 = 64 wide (hidden 48)" in g
    assert "heads x head_dim = hidden" in g and "loader" not in g  # its loader has a gemma branch
    assert "Only the loader lacks it: pass --src-model shared" in gpt2
    r = _pytest(*src, "--fv-model", f"{mistral},tiny-gpt2", "--src-model", "shared", cwd=tmp)
    (line,) = _stopped(r, "reference family")
    assert str(mistral) in line and "loader" not in line and "A fork with a mistral branch" in line


def test_the_family_probe_is_kept_by_its_inputs(reference, fv_options, tmp_path):
    """A probe's answer (a refusal in its words, or the src's BOS rule) is read back for the same inputs without
    asking the reference again; a src differing in one byte, or another model folder, probes again."""
    import shutil

    from fv.reference.capability import session_probe
    from fv.reference.probe_cache import ProbeCache

    cache, asked = ProbeCache(tmp_path / "probes"), []

    def get():
        asked.append(1)
        return reference

    def probe(src_root: Path, name: str):
        p = session_probe(get, "own", cache, (src_root, fv_options.baukit_root, fv_options.src_compat))
        return p(resolve_model_path(name), name, None)

    for name in ("tiny-gpt2", "tiny-olmo"):  # a refusal (its loader has no GPT-2 branch for that folder), then a rule
        first = probe(reference.src_root, name)
        assert probe(reference.src_root, name) == first and len(asked) == 1, name
        asked.clear()
    finding, rule = probe(reference.src_root, "tiny-gpt2")
    assert finding is not None and "Only the loader lacks it" in finding.line and rule is None
    finding, rule = probe(reference.src_root, "tiny-olmo")
    assert finding is None and rule[0] is True and len(asked) == 0
    copy = tmp_path / "src"
    shutil.copytree(reference.src_root, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "utils" / "model_utils.py", "a") as fh:
        fh.write("\n")
    probe(copy, "tiny-olmo")
    assert len(asked) == 1
    assert len(list((tmp_path / "probes").glob("*.json"))) == 3
    # the shapes it probes with are part of the key: trials of other shots probe again
    asked.clear()
    p5 = session_probe(get, "own", cache, (reference.src_root, fv_options.baukit_root, fv_options.src_compat), n_shots=5)
    assert p5(resolve_model_path("tiny-olmo"), "tiny-olmo", None)[0] is None and len(asked) == 1
    assert len(list((tmp_path / "probes").glob("*.json"))) == 4


# ---- reports that name an all-zero side ----------------------------------------------------------------------
def test_stage_summary_names_an_all_zero_side():
    from fv.parity.compare import EXACT, compare_all
    from fv.parity.report import name_constant_sides
    from fv.parity.stages import StageValues

    keys = ["0:0", "1:1"]
    g = torch.Generator().manual_seed(0)
    fv_ie = torch.rand(2, 8, 10, generator=g)
    src = StageValues(values={"indirect_effect": torch.zeros(2, 8, 10)})
    ours = StageValues(values={"indirect_effect": fv_ie})
    result = compare_all(src, ours, EXACT, keys, {})
    stage = result.stage("indirect_effect")
    assert stage.status == "FAIL"
    name_constant_sides(result, src, ours)
    lines = stage.summary().splitlines()
    note = "  the reference's indirect effects are all exactly 0 (160 values): its intervention did not change the output"
    assert note in lines and lines.index(note) < next(i for i, ln in enumerate(lines) if ln.startswith("  shape ")), lines
    ours.values["indirect_effect"] = torch.full((2, 8, 10), 0.5)
    result = compare_all(StageValues(values={"indirect_effect": fv_ie}), ours, EXACT, keys, {})
    name_constant_sides(result, StageValues(values={"indirect_effect": fv_ie}), ours)
    assert "fv's indirect effects are all the same value 0.5 (160 values)" in result.stage("indirect_effect").summary()


# ---- Llama 3 merges a full stop with the separator ------------------------------------------------------------
def test_llama3_merged_tokens_labelled_as_the_reference_does(reference, tmp_path, capsys):
    """fv and the reference agree label for label with the real Llama 3 tokenizer on inputs ending in a full stop,
    where '.\\n' is one token; verify-trials (M0) counts those tokens and names their slot."""
    from fv.cli import main
    from fv.parity.boundaries import boundary_counts
    from fv.runtime.prompts import has_bos_text, token_meta_labels
    from fv.runtime.slots import dummy_labels, slot_maps

    tok = load_tokenizer(resolve_model_path("tiny-llama3tok"))
    ft = _trials(tmp_path / "ft.json", "tiny-llama3tok", False)
    mc = {"prepend_bos": True, "name_or_path": "tiny-llama3tok"}
    n_shots = ft.n_shots
    src_dummy = reference.dummy_labels(tok, mc, n_shots, ft.meta["prefixes"], ft.meta["separators"])
    dummy = dummy_labels(n_shots, tok, True, ft.meta["prefixes"], ft.meta["separators"], bos_text=has_bos_text(ft.trials[0].prompt_data_clean))
    assert [(int(p), l) for p, l in src_dummy] == dummy
    n_labels = 0
    for tr in ft.trials:
        for pd_, shuffle in ((tr.prompt_data_clean, None),
                             (tr.prompt_data_corrupted, [e["output"] for e in tr.prompt_data_corrupted["examples"]])):
            src_pd = reference.prompt_data(tr.prompt_data_clean, False, shuffle_to=shuffle)
            theirs = reference.slots(src_pd, tok, mc, src_dummy)
            ours, _ = token_meta_labels(pd_, tok, prepend_bos=True)
            assert [(int(p), t, l) for p, t, l in theirs["token_labels"]] == ours
            idx_map, idx_avg = slot_maps(ours, dummy)
            assert {int(k): int(v) for k, v in theirs["idx_map"].items()} == idx_map
            n_labels += len(ours)
    n_tokens, n_trials, kinds = boundary_counts(ft, tok)
    assert n_tokens == len(ft.trials) * (n_shots + 1) and n_trials == len(ft.trials)  # every input ends in '.', merged with '\n'
    assert {(text, slot) for text, _parts, slot in kinds} == {(".\n", "separator_token"), (".\n", "query_separator_token")}
    assert main(["verify-trials", str(ft.path), "--tokenizer", "tiny-llama3tok"]) == 0
    out = capsys.readouterr().out
    assert f"tokens straddling prompt parts: {n_tokens} in 3 of 3 clean prompts" in out
    assert "'.\\n' (query_demonstration_token + query_separator_token) -> slot query_separator_token x3" in out
