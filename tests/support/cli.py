"""``fv`` commands run in-process as a user runs them, and the one-line failure every bad input must get."""

from __future__ import annotations

import contextlib
import io

from fv.cli import main

# ``fv run`` on the tiny model, one trial, no pictures: what the commands' input checks are run with
RUN_ARGS = ["--model", "tiny-llama", "--max-trials", "1", "--no-plots", "--quiet", "--edit-layer", "1"]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``fv.cli.main`` in-process, with its exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse
            rc = exc.code if isinstance(exc.code, int) else 2
    return rc, out.getvalue(), err.getvalue()


def assert_one_line_failure(rc: int, err: str, *needles: str) -> str:
    """A failure that is one stderr line, no traceback, and says each of ``needles``."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc != 0, err
    assert len(lines) == 1, f"expected one line on stderr, found {len(lines)}:\n{err}"
    assert "Traceback" not in err and "Error:" not in err.split(": error: ")[0], err
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]
