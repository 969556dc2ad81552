"""M1: fv's stage values match the goldens: the reference's values, kept as syrupy snapshots under snapshots/.

``pytest -m m1 --snapshot-update --src-root <src>`` (re)writes them from the live reference; without the
reference an update is refused, so no golden ever comes from fv itself. Otherwise fv's values must match them.
"""

from __future__ import annotations

import pytest

from fv.parity.golden import GOLDEN_ARTIFACTS
from fv.pytest_plugin import assert_golden

pytestmark = pytest.mark.m1


@pytest.mark.parametrize("artifact", list(GOLDEN_ARTIFACTS))
def test_golden(parity_run, snapshot, request, artifact):
    assert_golden(parity_run, artifact, snapshot, request.config.option.update_snapshots)
