"""The key/value cache argument under the name the model's ``forward`` takes.

transformers renamed ``past_key_values`` to ``cache`` (5.24 warns that the old name goes in 5.40); releases before
the rename know only the old one. fv passes the cache under whichever name the loaded model's ``forward`` declares,
so a researcher's transformers, old or new, sees no deprecated argument.
"""

from __future__ import annotations

import inspect
from typing import Any


def cache_kwarg(model: Any) -> str:
    """``"cache"`` where ``model.forward`` declares it, else ``"past_key_values"``."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def with_cache(model: Any, cache: Any) -> dict[str, Any]:
    """Keyword arguments handing ``cache`` to ``model`` (use_cache on)."""
    return {cache_kwarg(model): cache, "use_cache": True}


def returned_cache(output: Any) -> Any:
    """The cache a forward pass returned, under either name (None where it returned none)."""
    for name in ("cache", "past_key_values"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    return None
