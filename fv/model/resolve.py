"""Turning what a user names (a tiny model's name or a model folder) into a model folder on disk."""

from __future__ import annotations

from pathlib import Path

from fv.errors import FVError
from fv.model.tiny import DEFAULT_TINY, TINY_MODELS, ensure_tiny_model


def resolve_model_path(model: str | None) -> Path:
    """A model folder from a path or a tiny model's name (default: the embedded tiny model)."""
    if model is None or model in TINY_MODELS:
        return ensure_tiny_model(model or DEFAULT_TINY)
    p = Path(model)
    if not (p / "config.json").is_file():
        raise FVError(f"model folder {p} has no config.json. Give a local Hugging Face model folder or one of {sorted(TINY_MODELS)}.")
    return p
