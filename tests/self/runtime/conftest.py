"""The runs the runtime's self-tests share, each made once per session (tests/support/runs.py): a family's parity
run (test_families.py), a SentencePiece model's (test_spm_tokenizers.py), and ``fv run`` in both modes on a
family the reference has no branch for (test_runtime_families.py)."""

from __future__ import annotations

import pytest

from tests.support.runs import Runs


@pytest.fixture(scope="session")
def family_runs() -> Runs:
    """Parity runs by (family's tiny model, own or shared mode)."""
    return Runs()


@pytest.fixture(scope="session")
def spm_runs() -> Runs:
    """Parity runs by (SentencePiece tiny model, own or shared mode)."""
    return Runs()


@pytest.fixture(scope="session")
def runtime_family_runs() -> Runs:
    """``fv run`` in exact and fast mode by (tiny model, dtype or None)."""
    return Runs()
