"""Progress bars for long loops, by tqdm: silent off a terminal (pytest, CI, logs) and with ``--quiet``."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator


@contextlib.contextmanager
def stage_bar(desc: str, total: int, quiet: bool = False, unit: str = "trial", position: int | None = None,
              leave: bool = True) -> Iterator[Callable[[int], None]]:
    """A bar over ``total`` steps; yields the function that advances it. ``quiet`` forces it off; otherwise tqdm
    draws only when stderr is a terminal, so captured output (pytest, CI logs) stays clean."""
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc, unit=unit, disable=True if quiet else None, file=sys.stderr, position=position,
              leave=leave, dynamic_ncols=True) as bar:
        yield bar.update


def log_to_stderr(quiet: bool = False) -> Callable[[str], None]:
    """A line logger that does not break a bar in progress (tqdm.write), silent under ``--quiet``."""
    if quiet:
        return lambda _line: None
    from tqdm.auto import tqdm

    return lambda line: tqdm.write(line, file=sys.stderr)
