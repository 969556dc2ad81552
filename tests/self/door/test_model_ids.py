"""Models and tokenizers named as users name them: a local folder, a Hugging Face hub id in the local cache, a cache
snapshot path (written on another machine), a tokenizer-only folder. All offline, on a Hugging Face cache the
test builds in a temporary folder with huggingface_hub's layout (refs, snapshots, blobs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fv.cli import main
from fv.errors import FVError
from fv.model.resolve import resolve_model_path, resolve_tokenizer_path
from fv.model.tiny import ensure_tiny_model
from fv.paths import FIXTURES
from tests.support.hf_cache import COMMIT, build_hf_cache

pytestmark = pytest.mark.m0
REPO = "fv-test/tiny-llama"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An offline Hugging Face cache holding the tiny Llama as ``fv-test/tiny-llama``; returns its snapshot folder."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    snap = build_hf_cache(cache, REPO, ensure_tiny_model("tiny-llama"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return snap


@pytest.fixture
def tokenizer_only(tmp_path) -> Path:
    d = tmp_path / "tok"
    d.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(ensure_tiny_model("tiny-llama") / f, d / f)
    return d


def test_hub_id_and_snapshot_path_resolve_from_the_cache(hf_cache):
    assert resolve_model_path(REPO).resolve() == hf_cache.resolve()
    # a snapshot path written on another machine names the same repo and commit in this machine's cache
    foreign = f"/home/someone/.cache/huggingface/hub/models--{REPO.replace('/', '--')}/snapshots/{COMMIT}"
    assert resolve_model_path(foreign).resolve() == hf_cache.resolve()
    assert resolve_model_path(str(hf_cache)) == hf_cache  # the local snapshot path itself is a model folder


def test_hub_id_loads_a_model_named_after_its_repo(hf_cache):
    from fv.model.loading import load_model

    lm = load_model(REPO, "cpu", "float32")
    assert lm.name == "tiny-llama" and lm.path.resolve() == hf_cache.resolve()


def _trials(tmp_path, tok: str, name: str) -> dict:
    out = tmp_path / f"{name}.json"
    assert main(["make-trials", "--dataset", str(FIXTURES / "antonym_tiny.json"), "--tokenizer", tok, "--n-trials", "3",
                 "--n-shots", "4", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_every_identifier_makes_the_same_trials(hf_cache, tokenizer_only, tmp_path):
    """A tokenizer-only folder, a hub id and a local model folder give the same trials; only the recorded name differs."""
    by_folder = _trials(tmp_path, str(ensure_tiny_model("tiny-llama")), "folder")
    for spec in (REPO, str(tokenizer_only)):
        made = _trials(tmp_path, spec, spec.replace("/", "_"))
        assert made["meta"].pop("model_name_for_tokenizer") == spec
        assert made == {**by_folder, "meta": {k: v for k, v in by_folder["meta"].items() if k != "model_name_for_tokenizer"}}


def test_verify_trials_uses_the_files_tokenizer_name(hf_cache, tmp_path, capsys):
    _trials(tmp_path, REPO, "hub")
    assert main(["verify-trials", str(tmp_path / "hub.json")]) == 0
    assert "0 token-id mismatches" in capsys.readouterr().out
    raw = json.loads((tmp_path / "hub.json").read_text())
    raw["meta"]["model_name_for_tokenizer"] = "fv-test/not-cached"
    (tmp_path / "other.json").write_text(json.dumps(raw))
    assert main(["verify-trials", str(tmp_path / "other.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "meta.model_name_for_tokenizer" in err and "fv-test/not-cached" in err and "--tokenizer" in err


@pytest.mark.parametrize("spec, needle", [
    ("fv-test/not-cached", "not in the Hugging Face cache"),
    ("/home/someone/.cache/huggingface/hub/models--fv-test--gone/snapshots/abc", "fv-test/gone at abc not in the Hugging Face cache"),
    ("/no/such/folder/at/all", "no local folder"),
])
def test_unresolvable_names_fail_in_one_line(hf_cache, spec, needle):
    with pytest.raises(FVError) as e:
        resolve_tokenizer_path(spec)
    msg = str(e.value)
    assert "\n" not in msg and needle in msg and spec in msg


def test_tokenizer_only_folder_is_refused_where_a_model_is_needed(tokenizer_only):
    assert resolve_tokenizer_path(str(tokenizer_only)) == tokenizer_only
    with pytest.raises(FVError, match="found a tokenizer-only folder without it. This command needs the whole model folder"):
        resolve_model_path(str(tokenizer_only))


def test_doctor_checks_trials_with_a_tokenizer_only_folder(tokenizer_only, tmp_path):
    from fv.cli.doctor import run_doctor

    _trials(tmp_path, str(tokenizer_only), "tok")
    checks = {c.name: c for c in run_doctor(model=str(tokenizer_only), fixed_trials=str(tmp_path / "tok.json"), emit=lambda c: None)}
    assert checks["model"].status == "WARN" and "tokenizer only" in checks["model"].detail
    assert checks["trial token ids"].status == "OK"
