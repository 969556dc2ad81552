"""Runs made once per session: an expensive run (a parity run, an ``fv run``, a reference dump) made the first time
a test asks for it and handed to every later test that asks for the same one.

A session fixture returns one of these (each folder's conftest.py names its own); a parametrized fixture asks it
for its parameter's run. pytest may set up a parametrized fixture more than once per parameter (its order
interleaves parameters, or a plugin reorders the tests), so the run is kept here, not in the fixture's value."""

from __future__ import annotations

from typing import Any, Callable, Hashable


class Runs:
    """Runs by key, each made at most once (a run that raises, a skip included, is not kept: the next ask retries)."""

    def __init__(self) -> None:
        self._made: dict[Hashable, Any] = {}

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The run of ``key``, made by ``make()`` the first time it is asked for."""
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    def __contains__(self, key: Hashable) -> bool:
        return key in self._made

    def __len__(self) -> int:
        return len(self._made)
