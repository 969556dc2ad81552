"""Where the checkout keeps the data the suite ships: fixtures (embedded inputs) and snapshots (goldens)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "fixtures"
SNAPSHOT_ROOT = REPO_ROOT / "snapshots"
