"""Root conftest: the fv pytest plugin is loaded through its ``pytest11`` entry point once fv is installed;
this makes a plain checkout (``PYTHONPATH=.``) work the same way."""

import importlib.metadata

_installed = any(ep.value == "fv.pytest_plugin" for ep in importlib.metadata.entry_points(group="pytest11"))
if not _installed:
    pytest_plugins = ["fv.pytest_plugin"]
