"""Turning what a user names into a folder on disk: a tiny model's name, a local model or tokenizer folder, a
Hugging Face hub id (``meta-llama/Llama-3.1-8B``) found in the local Hugging Face cache, or a cache snapshot path
(``.../models--meta-llama--Llama-3.1-8B/snapshots/<commit>``), as users' run books and trials files write them.

fv never downloads: a hub id must already be in the cache (``HF_HOME`` / ``HF_HUB_CACHE``), so everything works
with ``HF_HUB_OFFLINE=1``. The cache layout is huggingface_hub's; this module only asks huggingface_hub.
"""

from __future__ import annotations

from pathlib import Path

from fv.errors import FVError
from fv.model.tiny import DEFAULT_TINY, TINY_MODELS, ensure_tiny_model

MODEL_FILES = ("config.json",)
# any one of these makes a folder a tokenizer AutoTokenizer can load (fast tokenizer, or the config naming the class)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_REPO_PREFIX = "models"


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _snapshot_parts(p: Path) -> tuple[str, str] | None:
    """(repo id, commit) of a path inside a cache snapshot, ``.../models--org--name/snapshots/<commit>[/...]``."""
    from huggingface_hub import constants

    parts = p.parts
    for i, part in enumerate(parts[:-2]):
        if part.startswith(_REPO_PREFIX + constants.REPO_ID_SEPARATOR) and parts[i + 1] == "snapshots":
            return part[len(_REPO_PREFIX + constants.REPO_ID_SEPARATOR):].replace(constants.REPO_ID_SEPARATOR, "/"), parts[i + 2]
    return None


def _from_cache(repo_id: str, revision: str | None) -> Path | None:
    """The cached snapshot folder of ``repo_id`` at ``revision`` (default: the cached main), or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError, ValueError, OSError):
        return None


def display_name(path: Path) -> str:
    """A cache snapshot's repository name (``Llama-3.1-8B``, not its commit hash), else the folder's name."""
    hit = _snapshot_parts(Path(path))
    return hit[0].split("/")[-1] if hit else Path(path).name


def _has(folder: Path, files: tuple[str, ...]) -> bool:
    return any((folder / f).is_file() for f in files)


def _resolve(spec: str | None, files: tuple[str, ...], what: str) -> Path:
    if spec is None or spec in TINY_MODELS:
        return ensure_tiny_model(spec or DEFAULT_TINY)
    need = " or ".join(files)
    p = Path(spec).expanduser()
    if p.is_dir():
        if _has(p, files):
            return p
        kind = "a tokenizer-only folder" if _has(p, TOKENIZER_FILES) else "a folder"
        raise FVError(f"{what} {spec}: expected a folder with {need}, found {kind} without it. "
                      + ("This command needs the whole model folder (config.json and weights)." if kind != "a folder"
                         else f"Give a local Hugging Face model folder, a hub id in the local cache, or one of {sorted(TINY_MODELS)}."))
    tried = [f"no local folder {p}"]
    snap = _snapshot_parts(p)
    if snap:  # a snapshot path written on another machine: the same repo and commit in this machine's cache
        repo_id, commit = snap
        found = _from_cache(repo_id, commit)
        tried.append(f"{repo_id} at {commit} not in the Hugging Face cache {_cache_dir()}" if found is None else "")
        if found is None:
            found = _from_cache(repo_id, None)
            tried.append(f"{repo_id} (main) not there either" if found is None else "")
    elif spec.count("/") <= 1 and not p.is_absolute() and not spec.startswith("."):
        repo_id = spec
        found = _from_cache(repo_id, None)
        tried.append(f"hub id {repo_id} not in the Hugging Face cache {_cache_dir()}" if found is None else "")
    else:
        found, repo_id = None, None
    if found is not None:
        if _has(found, files):
            return found
        raise FVError(f"{what} {spec}: the cached snapshot {found} has no {need}. "
                      f"Download the whole repository: `hf download {repo_id}`.")
    hint = f"download it first with `hf download {repo_id}` (HF_HOME / HF_HUB_CACHE pick the cache)" if repo_id else \
        "give an existing local folder"
    raise FVError(f"{what} {spec!r} not found: {'; '.join(t for t in tried if t)}. Give a local folder, a hub id in the "
                  f"local cache, or one of {sorted(TINY_MODELS)}; {hint}.")


def resolve_model_path(model: str | None) -> Path:
    """A model folder (with config.json) from a tiny model's name, a local folder, a hub id in the local cache, or a
    cache snapshot path; default: the embedded tiny model."""
    return _resolve(model, MODEL_FILES, "model")


def resolve_tokenizer_path(spec: str | None) -> Path:
    """A folder a tokenizer loads from: anything ``resolve_model_path`` takes, or a tokenizer-only folder (for the
    commands that only tokenize)."""
    return _resolve(spec, MODEL_FILES + TOKENIZER_FILES, "tokenizer")
