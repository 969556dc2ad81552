"""fv's self-tests on a transformers release that lacks a tiny model's class (Gemma 3 and OLMo 2 on 4.44.2, the
user's pinned release): a test that needs one is counted as skipped with the reason ``fv.compat.NotInThisRelease``
gives (the class and the release), not failed."""

from __future__ import annotations

import pytest

from fv.compat import NotInThisRelease


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if call.excinfo is not None and call.excinfo.errisinstance(NotInThisRelease):
        rep.outcome = "skipped"
        rep.longrepr = (str(item.path), (item.location[1] or 0) + 1, f"Skipped: {call.excinfo.value}")
