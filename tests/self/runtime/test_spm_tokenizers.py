"""SentencePiece tokenizers in the family matrix: a Llama 2 kind and a Gemma kind (``fixtures/spm_llama2``,
``fixtures/spm_gemma``, built by ``scripts/build_spm_tokenizers.py``) on the tiny models ``tiny-llama2spm`` and
``tiny-gemmaspm`` (``fv.model.tiny.SPM_TINY``).

What they stress: a space before a digit or some punctuation is the lone token ``▁`` (digits are split, and ``▁3``
is no piece), so a word's first token is a bare space mark that decodes to nothing or a space; newlines fall back to
byte pieces (``\\n\\n`` is two ``<0x0A>`` tokens); answers are several tokens. The trials come from
``fixtures/spm_tricky.json``, whose inputs begin with digits or punctuation and whose outputs are several tokens.

Checked here: the committed tokenizer files rebuild byte for byte; the slow path (the ``sentencepiece`` library
itself, what a slow ``LlamaTokenizer`` computes) and the fast ones (``LlamaTokenizer`` as the reference's 70b branch
names it, ``AutoTokenizer``, the raw ``tokenizer.json``) give the same ids on every trial prompt; M2 (every stage,
bit for bit) against the live reference in both modes, own (its loader loads its own copy) and shared; the lone
``▁`` tokens are named in the slot maps, on both sides alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from packaging.version import Version

from fv.compat import transformers_version
from fv.model.tiny import SPM_TINY, SPM_TOKENIZER_FILES, SPM_TOKENIZERS, TINY_MODELS
from fv.parity.pattern import describe, lone_metaspace_note, lone_metaspace_slots
from fv.parity.registry import stage
from fv.parity.run import run_parity
from fv.parity.stages import STAGES, Params
from fv.paths import FIXTURES, REPO_ROOT
from fv.pytest_plugin import load_session_model
from fv.runtime.prompts import METASPACE
from fv.runtime.slots import dummy_labels, lone_metaspace_positions
from fv.runtime.trials import load_trials, make_icl_trials, save_trials
from tests.support.stage_parity import assert_stage_matches

pytestmark = pytest.mark.tiny

DATASET = FIXTURES / "spm_tricky.json"
N_TRIALS, N_SHOTS, EDIT_LAYER, N_TOP = 3, 5, 3, 5
MODES = [(n, m) for n in SPM_TINY for m in ("own", "shared")]


def spm_trials(lm, folder: Path, bos_text: bool | None = None, n_trials: int = N_TRIALS, n_shots: int = N_SHOTS):
    """Fixed trials from the tricky dataset for this model (the BOS text exactly where the tokenizer adds none,
    unless ``bos_text`` says otherwise: the src in use's rule)."""
    bos = (not lm.prepend_bos) if bos_text is None else bos_text
    raw = make_icl_trials(DATASET, lm.tokenizer, n_trials, n_shots, seed=0, model_name_for_tokenizer=lm.name,
                          model_prepend_bos=lm.prepend_bos, prepend_bos_token_used=bos, dataset_json_label=DATASET.name)
    path = Path(folder) / f"fixed_trials_spm_tricky_t{n_trials}_s{n_shots}_{lm.name}{'_bostext' if bos else ''}.json"
    save_trials(path, raw)
    return load_trials(path)


# ---- the tokenizer files ----------------------------------------------------------------------------------------
def test_the_committed_tokenizers_rebuild_byte_for_byte(tmp_path):
    import importlib.util
    import inspect

    from transformers.convert_slow_tokenizer import generate_merges

    if "skip_tokens" not in inspect.signature(generate_merges).parameters:
        pytest.skip(f"the build script needs transformers' generate_merges(skip_tokens=...), which transformers "
                    f"{transformers_version()} lacks; the committed files rebuild on the newest end")
    spec = importlib.util.spec_from_file_location("build_spm_tokenizers", REPO_ROOT / "scripts" / "build_spm_tokenizers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.build(tmp_path)
    for folder in SPM_TOKENIZERS.values():
        for f in SPM_TOKENIZER_FILES:
            assert (tmp_path / folder / f).read_bytes() == (FIXTURES / folder / f).read_bytes(), f"{folder}/{f} differs on rebuild"


@pytest.mark.parametrize("folder", sorted(SPM_TOKENIZERS.values()))
def test_tokenizer_json_avoids_the_newest_format(folder):
    """tokenizers 0.19 reads these files: BPE merges as "a b" strings, no ignore_merges, the normalizer/decoder kinds
    the hub's Llama 2 and Gemma files use; the SentencePiece settings are the families' own."""
    import sentencepiece as spm

    tok = json.loads((FIXTURES / folder / "tokenizer.json").read_text())
    model = tok["model"]
    assert model["type"] == "BPE" and model["byte_fallback"] is True and "ignore_merges" not in model
    assert model["merges"] and all(isinstance(m, str) and len(m.split(" ")) == 2 for m in model["merges"])
    assert tok["pre_tokenizer"] is None
    sp = spm.SentencePieceProcessor(model_file=str(FIXTURES / folder / "tokenizer.model"))
    assert sp.get_piece_size() == len(model["vocab"]) == 512
    assert [sp.id_to_piece(i) for i in range(8)][sp.bos_id()] in ("<s>", "<bos>")
    if folder == "spm_llama2":  # SentencePiece's dummy prefix is the normalizer's Prepend
        assert [n["type"] for n in tok["normalizer"]["normalizers"]] == ["Prepend", "Replace"]
        assert (sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2)
    else:
        assert tok["normalizer"]["type"] == "Replace"
        assert (sp.pad_id(), sp.eos_id(), sp.bos_id(), sp.unk_id()) == (0, 1, 2, 3)


def _encoders(folder: Path):
    """Each way the tokenizer can be loaded: sentencepiece itself with BOS (the slow path), the family's named class
    (``LlamaTokenizer``, what the reference's 70b branch calls; ``GemmaTokenizer``), ``AutoTokenizer`` and the raw
    ``tokenizer.json``."""
    import sentencepiece as spm
    import transformers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    cls = getattr(transformers, json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"])
    named, auto = cls.from_pretrained(str(folder)), AutoTokenizer.from_pretrained(str(folder))
    raw = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    return {"sentencepiece (slow)": lambda t: [sp.bos_id()] + sp.encode(t), f"{cls.__name__}.from_pretrained": lambda t: named(t).input_ids,
            "AutoTokenizer": lambda t: auto(t).input_ids, "tokenizer.json": lambda t: raw(t).input_ids}


@pytest.mark.parametrize("name", SPM_TINY)
def test_slow_and_fast_give_the_same_ids_on_the_trial_prompts(name, tmp_path):
    """On 10 trials of 10 shots (as M0 makes them): every clean and corrupted prompt, and prompt + target (which the
    answer ids come from), the same ids from every loader; the trials' answer ids are sentencepiece's."""
    lm = load_session_model_plain(name)
    trials = spm_trials(lm, tmp_path, n_trials=10, n_shots=10)
    encoders = _encoders(lm.path)
    texts = [t for tr in trials.trials for t in (tr.clean_prompt_str, tr.corrupted_prompt_str, tr.clean_prompt_str + tr.target_str)]
    for text in texts:
        ids = {k: list(f(text)) for k, f in encoders.items()}
        assert len({tuple(v) for v in ids.values()}) == 1, f"{name} {text!r}: {ids}"
    slow = encoders["sentencepiece (slow)"]
    for tr in trials.trials:
        n = len(slow(tr.clean_prompt_str))
        assert list(tr.answer_ids) == slow(tr.clean_prompt_str + tr.target_str)[n:]


@pytest.mark.parametrize("folder", sorted(SPM_TOKENIZERS.values()))
def test_the_tokenizer_json_is_sentencepiece_on_any_text(folder):
    """The committed ``tokenizer.json``, read as it is (``tokenizers.Tokenizer``), is the trained model on every
    dataset cell alone, with and without its prompt's leading space, and on odd text (bytes it lacks, runs of
    spaces, newlines). (transformers 5.x's ``LlamaTokenizer`` rebuilds its pre-tokenizer from its own settings and
    drops sentencepiece's dummy-prefix ``▁`` before a leading space; prompts never begin with one: docs/loading.md.)"""
    import sentencepiece as spm
    from tokenizers import Tokenizer

    sp = spm.SentencePieceProcessor(model_file=str(FIXTURES / folder / "tokenizer.model"))
    tok = Tokenizer.from_file(str(FIXTURES / folder / "tokenizer.json"))
    rows = [r for f in ("antonym_tiny.json", "sentiment_tiny.json", "spm_tricky.json") for r in json.loads((FIXTURES / f).read_text())]
    texts = [t for r in rows for c in (r["input"], r["output"]) for t in (c, " " + c)]
    texts += ["", " ", "  x", "\n", "\n\n", "3\n\n4", "héllo wörld ☃", "a  b   c", "<|endoftext|>Q: 3"]
    bad = [t for t in texts if tok.encode(t).ids != [sp.bos_id()] + sp.encode(t)]
    assert not bad, f"{len(bad)} of {len(texts)} texts differ, first {bad[:3]}"


def load_session_model_plain(name: str):
    from fv.model.loading import load_model

    return load_model(name, device="cpu")


@pytest.mark.parametrize("name", SPM_TINY)
def test_the_tricky_trials_have_what_they_stand_for(name, tmp_path):
    """Inputs beginning with digits or punctuation, answers of several tokens, ``\\n\\n`` separators as two byte
    tokens, and lone ``▁`` tokens in the slot maps, named with their position, label and slot."""
    rows = json.loads(DATASET.read_text())
    assert all(r["input"][0].isdigit() or not r["input"][0].isalnum() for r in rows)
    lm = load_session_model_plain(name)
    trials = spm_trials(lm, tmp_path)
    assert any(len(tr.answer_ids) > 1 for tr in trials.trials)
    assert all(tr.prompt_data_clean["separators"]["output"] == "\n\n" for tr in trials.trials)
    pieces = lm.tokenizer.convert_ids_to_tokens(lm.tokenizer("Q: 3 cats\nA: x\n\nQ:").input_ids)
    assert pieces[pieces.index("3") - 1] == METASPACE and pieces.count("<0x0A>") == 3, pieces
    dummy = dummy_labels(N_SHOTS, lm.tokenizer, lm.prepend_bos, trials.meta["prefixes"], trials.meta["separators"])
    found = lone_metaspace_slots(trials.trials, lm.tokenizer, lm.prepend_bos, dummy)
    assert found, "no lone '▁' token in the trials' slot maps"
    for key, sides in found.items():
        tr = next(t for t in trials.trials if f"{t.trial_id}:{t.trial_idx}" == key)
        for side, entries in sides.items():
            text = tr.clean_prompt_str if side == "clean" else tr.corrupted_prompt_str
            assert [e["position"] for e in entries] == lone_metaspace_positions(lm.tokenizer, lm.tokenizer(text).input_ids)
            assert all(e["slot"] is not None and "token" in e["label"] for e in entries)
    note = lone_metaspace_note(found, len(trials.trials))
    assert "\n" not in note and note.startswith("lone '▁' tokens in the slot maps: ") and "position" in note, note


def test_byte_level_tokenizers_report_no_lone_metaspace(tmp_path):
    from fv.model.loading import load_model

    lm = load_model("tiny-llama", device="cpu")
    trials = spm_trials(lm, tmp_path)
    dummy = dummy_labels(N_SHOTS, lm.tokenizer, lm.prepend_bos, trials.meta["prefixes"], trials.meta["separators"])
    assert lone_metaspace_slots(trials.trials, lm.tokenizer, lm.prepend_bos, dummy) == {}
    assert lone_metaspace_note({}, 3) == "lone '▁' tokens in the slot maps: 0 in 3 trials"


def test_a_mismatch_pattern_names_the_lone_metaspace_slots():
    bad = torch.zeros(2, 1, 6, 4, dtype=torch.bool)
    bad[0, 0, 3] = bad[1, 0, 4] = True
    dims = stage("mean_activations").dims
    line = describe(dims, bad, [f"l{i}" for i in range(6)], [3, 5], lone_metaspace_slots=[3])
    assert "2 of 6 slots" in line and "1 of them hold a lone '▁' token (3)" in line, line
    assert describe(dims, bad, None, None) == describe(dims, bad)  # unchanged without it


@pytest.mark.parametrize("name", SPM_TINY)
def test_the_tiny_spm_models_load_by_the_reference_rule(name):
    """Folder words as the reference's loader reads them: 'llama' and '8b' (float32) for the Llama 2 kind, 'gemma'
    (float16) for the Gemma kind; both tokenizers add BOS (the reference's MODEL_CONFIG says prepend_bos True)."""
    lm = load_session_model_plain(name)
    spec = TINY_MODELS[name]
    assert spec.family in lm.path.name or spec.family == "llama" and "llama" in lm.path.name
    assert lm.prepend_bos is True and lm.info.model_type == spec.family
    # the fast (Rust) tokenizer either way: transformers 5 names it LlamaTokenizer, 4.x LlamaTokenizerFast
    fast = "" if transformers_version() >= Version("5") else "Fast"
    if spec.family == "llama":
        assert "8b" in lm.path.name and lm.dtype == torch.float32 and type(lm.tokenizer).__name__ == f"LlamaTokenizer{fast}"
    else:
        assert lm.dtype == torch.float16 and type(lm.tokenizer).__name__ == f"GemmaTokenizer{fast}"
    assert (lm.path / "tokenizer.model").is_file()


# ---- M2 against the live reference, both modes --------------------------------------------------------------------
@pytest.fixture(scope="module", params=MODES, ids=lambda p: f"{p[0]}-{p[1]}")
def spm_run(request, fv_options, tmp_path_factory, spm_runs):
    """fv (loaded by its default rule, the reference's) against the live reference, own or shared mode. Without the
    reference it skips: these models have no goldens (goldens are the reference's numbers, written from it). Made
    once per session (``spm_runs``)."""
    from fv.pytest_plugin import get_reference, reference_own_model
    from fv.reference.stages import STAGE_FUNCTIONS, live_source

    name, mode = request.param
    ref = get_reference(fv_options)
    if isinstance(ref, str):
        pytest.fail(ref, pytrace=False) if fv_options.require_src else pytest.skip(ref)

    def make():
        lm = load_session_model(fv_options, name)
        out = tmp_path_factory.mktemp(f"spm-{name}-{mode}")
        theirs = reference_own_model(ref, lm) if mode == "own" else lm
        trials = spm_trials(lm, out, ref.bos_text_rule(theirs)[0])
        source = live_source(ref, theirs if mode == "own" else None)
        params = Params(n_top_heads=N_TOP, edit_layer=EDIT_LAYER, max_trials=N_TRIALS, mode=fv_options.mode)
        return run_parity(lm, trials, params, source, out / "reports", stage_functions=STAGE_FUNCTIONS)

    return spm_runs.get((name, mode), make)


@pytest.mark.m2
@pytest.mark.parametrize("stage", STAGES)
def test_spm_stage(spm_run, stage):
    assert_stage_matches(spm_run, stage, type(spm_run.lm.tokenizer).__name__)


@pytest.mark.m2
def test_spm_run_is_the_mode_it_says(spm_run):
    """Own: the reference's loader loaded its own copy (same dtype as fv's, sdpa); shared: fv's object."""
    meta = spm_run.result.meta
    name, mode = spm_run.lm.name, meta["src_model_mode"]
    assert (name, mode) in MODES
    if mode == "own":
        assert meta["src_dtype"] == meta["dtype"] and meta["src_attn_implementation"] == meta["attn_implementation"], meta


@pytest.mark.m2
def test_spm_lone_metaspace_tokens_are_labelled_alike(spm_run):
    """The lone ``▁`` positions of every trial's slot map carry the same label and slot on both sides."""
    run = spm_run
    tok = run.lm.tokenizer
    src_slots, fv_slots = run.src.values["slot"]["trials"], run.fv.values["slot"]["trials"]
    prompts = run.fv.values["prompt"]
    n_lone = 0
    for key, sides in fv_slots.items():
        for side, entry in sides.items():
            ids = prompts[key][f"{side}_input_ids"]
            lone = lone_metaspace_positions(tok, ids)
            n_lone += len(lone)
            theirs = {int(p): (t, l) for p, t, l in src_slots[key][side]["token_labels"]}
            ours = {int(p): (t, l) for p, t, l in entry["token_labels"]}
            for pos in lone:
                assert ours[pos] == theirs[pos], f"{key} {side} position {pos}: fv {ours[pos]} src {theirs[pos]}"
                assert entry["idx_map_full"].get(str(pos)) == src_slots[key][side]["idx_map_full"].get(str(pos))
    assert n_lone > 0, "the trials hold no lone '▁' token: the test tests nothing"


@pytest.mark.m2
def test_a_mean_activation_mismatch_names_its_lone_metaspace_slots(spm_run):
    """A port that drops the lone ``▁`` tokens from its averages differs at their slots only; the gate's pattern says
    those slots hold a lone ``▁`` (the report's ``pattern``, beside the slot labels)."""
    import dataclasses

    from fv.parity.pattern import lone_metaspace_slot_indices
    from fv.parity.run import compare_with

    run = spm_run
    dummy = [(int(p), str(label)) for p, label in run.src.values["slot"]["dummy_labels"]]
    lone = lone_metaspace_slot_indices(run.trials.subset(run.params.max_trials), run.lm.tokenizer, run.lm.prepend_bos, dummy)
    assert lone, "no slot holds a lone '▁': the test tests nothing"
    mean = run.fv.values["mean_activations"].clone()
    mean[:, :, lone[0]] += 1.0  # the slot averaged differently
    port = dataclasses.replace(run.fv, values={**run.fv.values, "mean_activations": mean})
    stage = compare_with(run, port).stage("mean_activations")
    assert stage.status == "FAIL"
    assert f"1 of them hold a lone '\u2581' token ({lone[0]})" in stage.pattern, stage.pattern


@pytest.mark.parametrize("name, lone", [("tiny-llama2spm", True), ("tiny-gemmaspm", True), ("tiny-llama", False)])
def test_verify_trials_names_the_lone_metaspace_tokens(name, lone, tmp_path, capsys):
    """``fv verify-trials`` (M0's command) says, beside the tokens straddling prompt parts, where lone ``▁`` tokens sit
    in the slot maps: positions, labels and slots; none for a byte-level BPE."""
    from fv.cli import main

    ft = spm_trials(load_session_model_plain(name), tmp_path)
    assert main(["verify-trials", str(ft.path), "--tokenizer", name]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("lone '▁' tokens in the slot maps: ")]
    assert len(lines) == 1, lines
    if lone:
        assert f"of {N_TRIALS} trials, averaged into slots" in lines[0] and "position" in lines[0], lines[0]
    else:
        assert lines[0].endswith(f": 0 in {N_TRIALS} trials"), lines[0]
