"""The runs the verdict's self-tests share, each made once per session (tests/support/runs.py): a family's replay
against its goldens, the start of every golden mutant (test_golden_sensitivity.py)."""

from __future__ import annotations

import pytest

from tests.support.runs import Runs


@pytest.fixture(scope="session")
def golden_replays() -> Runs:
    """fv's exact parity run against the goldens by family's tiny model."""
    return Runs()
