"""Root conftest: the fv pytest plugin is loaded through its ``pytest11`` entry point once fv is installed;
this makes a plain checkout (``PYTHONPATH=.``) work the same way."""

import importlib.metadata

import pytest

_installed = any(ep.value == "fv.pytest_plugin" for ep in importlib.metadata.entry_points(group="pytest11"))
if not _installed:
    pytest_plugins = ["fv.pytest_plugin"]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """The checkout's own suite runs its slowest tests (marked ``slow``: whole pytest sessions in a subprocess, the
    documented commands, Slurm arrays) first, so that with ``-n`` the workers end together instead of one running a
    long test alone at the end (longest first balances the workers best). The order within each group is kept."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
