"""fv's pytest entry point: loads ``fv.pytest_plugin`` once it has checked that ``fv`` is this package.

``python -m pytest`` run from a user's project root puts that root first on ``sys.path``; a project with its own
package named ``fv`` (the runtime fv replaces, say) then shadows this one and the plugin cannot load. That is
told here in one line (pytest's usage error, exit code 4), with the ways to run that work.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parent


def shadowing_fv() -> Path | None:
    """The folder of the ``fv`` package that ``import fv`` finds when it is not this one (else None)."""
    spec = importlib.util.find_spec("fv")
    origin = Path(spec.origin).resolve() if spec and spec.origin else None
    ours = HERE / "fv" / "__init__.py"
    if origin is None or origin == ours.resolve() or not ours.is_file():
        return None
    return origin.parent


SHADOW = shadowing_fv()

if SHADOW is None:
    pytest_plugins = ["fv.pytest_plugin"]
else:
    def pytest_configure(config):  # noqa: ARG001 - pytest's hook signature
        import pytest

        raise pytest.UsageError(
            f"fv: `import fv` finds your project's own package {SHADOW}, not fv's parity suite ({HERE / 'fv'}): "
            "`python -m pytest` puts the folder it runs in first on sys.path. Run the installed entry point instead "
            "(`pytest ...`, not `python -m pytest ...`), or run from fv's checkout with `--rootdir` set to your project.")
