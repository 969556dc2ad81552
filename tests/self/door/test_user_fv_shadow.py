"""fv's pytest entry point (``fvpytest``) under a user's project that has its own package named ``fv``:
``python -m pytest`` from that project puts its ``fv`` first, which is told in one line (exit code 4); without
such a package the entry point loads the plugin as before."""

from __future__ import annotations

import os
import subprocess
import sys

from fv.paths import REPO_ROOT


def _run(cwd, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("FV_SRC_ROOT", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    # -p no:fv: the entry point as installed may predate fvpytest; load it by name, as the new entry point does
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:fv", "-p", "fvpytest", "-p", "no:cacheprovider",
                           "-p", "no:xdist", "-q", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_users_own_fv_package_is_told_in_one_line(tmp_path):
    (tmp_path / "fv").mkdir()
    (tmp_path / "fv" / "__init__.py").write_text("USERS_OWN_FV = True\n")
    (tmp_path / "test_x.py").write_text("def test_x(fv_options):\n    pass\n")
    proc = _run(tmp_path, "test_x.py")
    lines = [l for l in (proc.stdout + proc.stderr).splitlines() if "fv:" in l]
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(lines) == 1 and str(tmp_path / "fv") in lines[0] and "python -m pytest" in lines[0] and "--rootdir" in lines[0], lines
    assert "Traceback" not in proc.stderr


def test_without_a_users_fv_the_entry_point_loads_the_plugin(tmp_path):
    (tmp_path / "test_x.py").write_text("def test_x(fv_options):\n    assert fv_options.max_trials == 5\n")
    proc = _run(tmp_path, "test_x.py")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
