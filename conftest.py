"""Root conftest: the fv pytest plugin is loaded through its ``pytest11`` entry point once fv is installed;
this makes a plain checkout (``PYTHONPATH=.``) work the same way."""

import importlib.metadata

import pytest

_installed = any(ep.value == "fv.pytest_plugin" for ep in importlib.metadata.entry_points(group="pytest11"))
if not _installed:
    pytest_plugins = ["fv.pytest_plugin"]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """The checkout's own suite runs its slowest tests first (marked ``slow``; ``slow(seconds=N)`` where one takes
    about N seconds on a 2-core CPU: whole pytest sessions in a subprocess, the documented commands, Slurm arrays),
    longest first, so that with ``-n`` the workers end together instead of one running a long test alone at the end.
    The order is otherwise kept."""

    def cost(item):
        mark = item.get_closest_marker("slow")
        return 0 if mark is None else mark.kwargs.get("seconds", 5)

    items.sort(key=lambda item: -cost(item))
