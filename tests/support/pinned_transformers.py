"""The user's pinned environment for 70B runs (transformers 4.44.2, tokenizers 0.19), beside this venv's 5.x.

Installed at set-up time (``.ci/run``) into ``$FV_CACHE_DIR/transformers-4.44.2`` with pip's ``--target`` and no
dependencies of its own: a folder put first on ``PYTHONPATH`` in a subprocess, so that process imports 4.44.2 with
this venv's torch, numpy and safetensors. Never installed into the venv; no test fetches anything.
"""

from __future__ import annotations

import os
from pathlib import Path

PINNED = ["transformers==4.44.2", "tokenizers==0.19.1", "huggingface_hub==0.24.7", "requests", "urllib3",
          "charset-normalizer", "certifi", "idna", "protobuf<6"]


def pinned_dir() -> Path:
    """``$FV_PINNED_TRANSFORMERS``, else ``$FV_CACHE_DIR/transformers-4.44.2`` (``~/.cache/fv/...`` when unset)."""
    if os.environ.get("FV_PINNED_TRANSFORMERS"):
        return Path(os.environ["FV_PINNED_TRANSFORMERS"])
    return Path(os.environ.get("FV_CACHE_DIR") or Path.home() / ".cache" / "fv") / "transformers-4.44.2"


def install_command() -> str:
    """The set-up line that fills :func:`pinned_dir` (``.ci/run`` runs it), from the repository's root."""
    return f"FV_CACHE_DIR={pinned_dir().parent} python -m tests.support.pinned_transformers"


def pinned_env() -> dict | None:
    """The environment of a subprocess that imports transformers 4.44.2 first; None when it is not set up."""
    folder = pinned_dir()
    if not (folder / "transformers" / "__init__.py").is_file():
        return None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), str(Path(__file__).resolve().parents[2])]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def main() -> int:
    """Set up :func:`pinned_dir` when it is missing (``python -m tests.support.pinned_transformers``, by ``.ci/run``)."""
    import subprocess
    import sys

    if pinned_env() is not None:
        return 0
    return subprocess.call([sys.executable, "-m", "pip", "install", "-q", "--target", str(pinned_dir()), "--no-deps", *PINNED])


if __name__ == "__main__":
    raise SystemExit(main())
