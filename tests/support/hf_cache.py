"""An offline Hugging Face cache on disk, laid out as huggingface_hub writes it, for hub ids in tests."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def build_hf_cache(cache: Path, repo_id: str, folder: Path, commit: str = COMMIT) -> Path:
    """``models--org--name/{refs/main, snapshots/<commit>/<file> -> blobs/<sha256>}``, as huggingface_hub writes it;
    returns the snapshot folder. ``cache`` is what ``HF_HUB_CACHE`` names."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in sorted(folder.iterdir()):
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, blob)
        (snap / f.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    return snap
