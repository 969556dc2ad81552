"""q ids for M7 come from the relation CSV (or a user's sampled-trials file, ``--fixed-trials``) at collection time,
so each q is its own test (tests/support/relation_inputs.py); the trials M7 runs on are made once per session."""

from __future__ import annotations

import pytest

from fv.pytest_plugin import FVOptions
from tests.support.relation_inputs import selected_qs
from tests.support.runs import Runs


@pytest.fixture(scope="session")
def relation_trials_made() -> Runs:
    """M7's trials (the all-q file and one file per q) by (model, CSV or trials file, trials per q)."""
    return Runs()


def pytest_generate_tests(metafunc):
    if "q_id" in metafunc.fixturenames:
        opts = FVOptions.of(metafunc.config)
        metafunc.parametrize("q_id", selected_qs(opts))
