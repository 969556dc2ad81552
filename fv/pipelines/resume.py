"""What lets a run resume: a stage's inputs key, recorded in its meta beside its outputs, and the check that those
outputs are still what the same inputs would give. One rule for the M4 run, the universal FV's tasks and, through
``RelationConfig.q_key``, the relation run's qs: outputs are reused only when every file exists and the meta
records the same key; anything else recomputes the stage.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence


def inputs_key(*parts: Any) -> str:
    """16 hex digits of sha256 over ``parts`` as sorted JSON (non-JSON values by ``str``): a stage's inputs key,
    chained through the stages (a later key includes the earlier one)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def outputs_fresh(meta_path: Path, key: str, outputs: Sequence[Path]) -> bool:
    """Whether ``outputs`` all exist and ``meta_path`` records ``inputs_key == key`` (resume reuses them). A meta
    that cannot be read is not fresh."""
    if not meta_path.is_file() or not all(p.is_file() for p in outputs):
        return False
    try:
        return json.loads(meta_path.read_text()).get("inputs_key") == key
    except (OSError, json.JSONDecodeError):
        return False
