"""A disk cache of the reference family probe (``fv.reference.capability``), so a session's door check does not
import the reference's ``src/`` again when nothing it depends on changed.

The probe runs the src's loader and per-family code paths on a weightless copy of a model; importing the src for
it (its ``utils``, baukit, bitsandbytes) is most of a short session's start (about 7 s on a 2-core CPU). What it
finds depends only on: every file of the src and of the baukit it would import, fv's own code, the model's
non-weight files (config, tokenizer) and the name it was given, the mode (own or shared), the compat flag, the
Python environment (interpreter, torch and transformers versions, ``PYTHONPATH``: a fork may import its own
project's packages). Not the working folder: where a fork's loader imports a package found only from its
project root, the probe in fv's process defers to the reference's own process (``fv.reference.capability``),
which every session that runs stages starts from where the user runs it. The key is all of those; an entry is a JSON file
named by the key's sha256 that holds the key itself and the probe's answer, written atomically and trusted only
when the key it holds is this one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

from fv.io import write_json

PROBE_CACHE_VERSION = 2  # 2: probes on the session's shapes (slots from its shots), warnings kept apart
_NOT_WEIGHTS = 8 << 20  # files above this in a model folder are weights or shards: the probe never reads them


def default_probe_cache_dir() -> Path:
    """``probes/`` in the src-values cache (``$FV_CACHE_DIR/src_values/probes``; ``~/.cache/fv/...`` when unset)."""
    from fv.parity.src_cache import default_cache_dir

    return default_cache_dir() / "probes"


def _baukit_files(src_root: Path, baukit_root: str | None) -> list[str]:
    """The baukit files the src would import: the installed package's, else the candidates' ``nethook.py``."""
    from fv.reference.worker import baukit_candidates

    files = [str(p) for p in baukit_candidates(src_root, baukit_root) if p.is_file()]
    loaded = sys.modules.get("baukit")
    try:
        spec = importlib.util.find_spec("baukit") if loaded is None else getattr(loaded, "__spec__", None)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        files.insert(0, spec.origin)
    return files


def _folder_digest(path: Path) -> str:
    """sha256 over a model folder's small files (name and bytes): config, tokenizer, generation config."""
    from fv.io import sha256_file

    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(path.iterdir()):
            if p.is_file() and p.stat().st_size <= _NOT_WEIGHTS:
                h.update(p.name.encode() + b"\0" + sha256_file(p).encode() + b"\n")
    return h.hexdigest()


def session_key(src_root: Path, baukit_root: str | None, compat: bool, src_model: str) -> dict:
    """The part of the key shared by a session's models; taken before the src is imported (importing it replaces
    baukit in ``sys.modules``)."""
    import torch
    import transformers

    import fv
    from fv.parity.src_cache import tree_digest

    return {"version": PROBE_CACHE_VERSION, "fv": tree_digest(Path(fv.__file__).parent), "src": tree_digest(src_root),
            "baukit": {f: tree_digest(f) for f in _baukit_files(Path(src_root), baukit_root)}, "compat": bool(compat),
            "src_model": src_model, "python": sys.executable, "python_version": sys.version, "torch": torch.__version__,
            "transformers": transformers.__version__, "pythonpath": os.environ.get("PYTHONPATH", "")}


def probe_key(session: dict, path: Path, name: str, shapes: dict | None = None) -> dict:
    """Everything the probe's answer for one model depends on (see the module docstring), the shapes it probes
    with included (``{"n_shots": ...}``: the session's trials decide how many slots the mean activations have)."""
    return {**session, "name": name, "path": str(Path(path).resolve()), "model_files": _folder_digest(Path(path)),
            "shapes": dict(shapes or {})}


class ProbeCache:
    """The probe's answers on disk under ``root``, one JSON file per key."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _file(self, key: dict) -> Path:
        return self.root / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest() + ".json")

    def get(self, key: dict) -> dict | None:
        """The stored answer ``{"finding": [check, line, refuse] | None, "rule": [writes, rule, src] | None}``, or
        None."""
        try:
            entry = json.loads(self._file(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("key") != json.loads(json.dumps(key)) or "answer" not in entry:
            return None
        return entry["answer"]

    def put(self, key: dict, answer: dict) -> None:
        try:
            write_json(self._file(key), {"key": key, "answer": answer})
        except OSError:  # a read-only cache folder costs a probe next time, nothing else
            pass
