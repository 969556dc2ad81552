"""The reference in the user's own interpreter (``--src-python``): its own process started with that Python, the
handshake checking what crosses (``fv.launch``), and the report naming both environments.

"The user's interpreter" here is this venv's Python with the user's pinned transformers 4.44.2 and tokenizers 0.19
first on its path (tests/support/pinned_transformers.py, set up by .ci/run), behind a wrapper script: the same torch
on both sides, another transformers on the reference's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fv import launch
from fv.errors import FVError
from fv.paths import REPO_ROOT
from tests.support.cli import assert_one_line_failure, run_cli
from tests.support.pinned_transformers import install_command, pinned_env


def _their_python(tmp_path: Path) -> Path:
    env = pinned_env()
    if env is None:
        pytest.skip(f"transformers 4.44.2 is not set up beside this venv; set it up with: {install_command()}")
    wrapper = tmp_path / "their-env" / "bin" / "python"
    wrapper.parent.mkdir(parents=True)
    pinned = env["PYTHONPATH"].split(os.pathsep)[0]
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={pinned}${{PYTHONPATH:+:$PYTHONPATH}} exec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


@pytest.mark.slow(seconds=60)
def test_m2_passes_with_the_reference_under_the_users_transformers(tmp_path, fv_options):
    """``pytest -m m2 --src-python THEIRS``: the reference's own loader and stages under transformers 4.44.2, fv's
    under this venv's 5.x, on the tiny Llama: every stage bit-exact, the injection live there without --src-compat
    (4.x decoder layers return tuples), and the report's meta naming both interpreters and their libraries."""
    if not fv_options.src_root and not os.environ.get("FV_SRC_ROOT"):
        pytest.skip("needs the live reference (--src-root or FV_SRC_ROOT)")
    theirs = _their_python(tmp_path)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pytest", str(REPO_ROOT / "tests" / "parity" / "test_m2_stage_parity.py"), "-m", "m2",
           "-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:randomly", "-q", "--fv-model", "tiny-llama",
           "--max-trials", "1", "--edit-layer", "2", "--fv-out", str(out), "--src-python", str(theirs)]
    cmd += ["--src-root", str(fv_options.src_root)] if fv_options.src_root else []
    cmd += ["--baukit-root", fv_options.baukit_root] if fv_options.baukit_root else []
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT")}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    report = json.loads(next(out.rglob("parity_suite_report.json")).read_text())
    assert report["status"] == "PASS" and report["meta"]["tolerance"]["name"] == "exact"
    assert all(s["max_abs_diff"] == 0.0 for s in report["stages"]), report["stages"]
    injection = next(s for s in report["stages"] if s["name"] == "injection")
    assert injection["status"] == "PASS" and report["meta"]["src_compat"] is False  # live on 4.x without the flag
    meta = report["meta"]
    assert meta["src_environment"]["versions"]["transformers"] == "4.44.2"
    assert meta["src_environment"]["versions"]["tokenizers"].startswith("0.19")
    assert meta["fv_environment"]["versions"]["transformers"].startswith("5.")
    assert "under " + str(theirs) in text and "transformers 4.44.2" in text  # the table names the reference's environment


def test_the_handshake_refuses_what_cannot_cross():
    ready = json.loads(launch.ready_line())
    assert launch.check_ready(ready, "the reference's process", None)["versions"]["safetensors"]
    with pytest.raises(FVError, match="speaks protocol 0, this fv 1"):
        launch.check_ready({**ready, "protocol": 0}, "the reference's process", "/their/python")
    no_st = {**ready, "versions": {**ready["versions"], "safetensors": None}}
    with pytest.raises(FVError, match=r"/their/python has no safetensors.*-m pip install safetensors"):
        launch.check_ready(no_st, "the reference's process", "/their/python")


def test_an_interpreter_that_dies_is_named_with_its_log(tmp_path, fv_options):
    if not fv_options.src_root and not os.environ.get("FV_SRC_ROOT"):
        pytest.skip("needs the live reference (--src-root or FV_SRC_ROOT)")
    from fv.reference import Reference, find_src_root

    dead = tmp_path / "python"
    dead.write_text("#!/bin/sh\necho 'their interpreter is broken' >&2\nexit 3\n")
    dead.chmod(0o755)
    ref = Reference(find_src_root(fv_options.src_root), fv_options.baukit_root, in_process=False, python=str(dead))
    with pytest.raises(FVError, match="died with exit code 3.*their interpreter is broken"):
        ref.load_own("tiny-llama")
    with pytest.raises(FVError, match="cannot start the interpreter"):
        Reference(find_src_root(fv_options.src_root), None, in_process=False, python=str(tmp_path / "none")).load_own("x")


def test_src_python_with_the_shared_mode_is_refused(tmp_path):
    rc, _out, err = run_cli(["reference", "run", "--model", "tiny-llama", "--fixed-trials", "x.json", "--out", str(tmp_path),
                             "--src-model", "shared", "--src-python", sys.executable, "--src-root", str(tmp_path)])
    assert rc != 0
    assert_one_line_failure(rc, err, "--src-python runs the reference in its own process")
