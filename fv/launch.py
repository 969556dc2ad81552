"""One launcher and one handshake for a side that runs in a process of its own, maybe under another interpreter: the
reference's own process (``fv/reference/process.py``, ``--src-python``) and a port's (``fv/ports/functions.py``,
``--port-python``), so the reference or a port runs exactly as its user runs it, in their environment (their
transformers, their bitsandbytes), while fv runs in its own.

The worker scripts (``fv/reference/worker.py``, ``fv/ports/worker.py``) import nothing of fv: they load this file by
its path (``load_by_path``) and send :func:`ready_line` as their first line. That line carries the protocol version
and the worker's environment (Python, its executable, the libraries that matter); :func:`check_ready` is the
parent's side of the handshake: the same protocol, and what crosses between the processes (JSON lines and tensors
in safetensors files) readable there. This module imports nothing of fv at its top.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

PROTOCOL = 1  # the JSON-lines requests and the safetensors files both workers speak; raised when either changes
LIBRARIES = ("torch", "transformers", "tokenizers", "safetensors", "accelerate", "bitsandbytes", "numpy")
CROSSING = ("torch", "safetensors")  # what a tensor needs on both sides to cross between the processes


def environment_facts() -> dict:
    """This interpreter and the versions of ``LIBRARIES`` installed for it (None where absent)."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    return {"protocol": PROTOCOL, "python": platform.python_version(), "executable": sys.executable, "versions": versions}


def ready_line() -> str:
    """A worker's first line: ready, with its protocol and environment."""
    return json.dumps({"ok": True, "ready": True, **environment_facts()})


def load_by_path() -> Any:
    """This module, loaded by its path under a private name: how a worker that imports nothing of fv uses it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_fv_launch", Path(__file__).resolve())
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


# ---- the parent's side ----------------------------------------------------------------------------------------
def start(python: str | None, script: Path, args: list[str], cwd: Path, env: dict, stderr: IO, who: str) -> subprocess.Popen:
    """``python -u script args...`` from ``cwd`` with ``env``, talking JSON lines on stdin/stdout, its stderr to
    ``stderr`` (the log). ``python``: the interpreter (default: this one). ``FVError`` in one line when it cannot
    be started."""
    from fv.errors import FVError

    exe = python or sys.executable
    try:
        return subprocess.Popen([exe, "-u", str(script), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=stderr, cwd=str(cwd), env=env, text=True, bufsize=1)
    except OSError as exc:
        raise FVError(f"{who}: cannot start the interpreter {exe}: {exc}; pass the path of a Python executable") from None


def check_ready(ready: dict, who: str, python: str | None) -> dict:
    """The handshake: the worker speaks this fv's protocol, and its interpreter has what tensors cross with
    (``CROSSING``). Returns the worker's environment facts; ``FVError`` in one line saying what to do."""
    from fv.errors import FVError

    exe = python or sys.executable
    if ready.get("protocol") != PROTOCOL:
        raise FVError(f"{who}: its process under {exe} speaks protocol {ready.get('protocol')}, this fv {PROTOCOL}: the "
                      "worker and fv must come from one checkout (reinstall fv, or point at this checkout's worker)")
    versions = ready.get("versions") or {}
    missing = [lib for lib in CROSSING if not versions.get(lib)]
    if missing:
        raise FVError(f"{who}: {exe} has no {', '.join(missing)}, which tensors cross the two processes with; install "
                      f"it there ({exe} -m pip install {' '.join(missing)})")
    return {k: ready.get(k) for k in ("protocol", "python", "executable", "versions")}


def describe(facts: dict) -> str:
    """``python 3.11.9 (/path/bin/python), torch 2.13.0, transformers 4.44.2, ...`` for reports."""
    libs = ", ".join(f"{k} {v}" for k, v in (facts.get("versions") or {}).items() if v)
    return f"python {facts.get('python')} ({facts.get('executable')}), {libs}"
