"""A small progress bar on stderr for long runs (no dependency; silent when stderr is not a terminal unless forced)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, enabled: bool = True, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.totals: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.t0: dict[str, float] = {}

    def start(self, stage: str, total: int) -> None:
        self.totals[stage], self.done[stage], self.t0[stage] = total, 0, time.perf_counter()
        self._draw(stage)

    def __call__(self, stage: str, n: int = 1) -> None:
        if stage not in self.totals:
            self.start(stage, 0)
        self.done[stage] += n
        self._draw(stage)

    def finish(self, stage: str) -> None:
        if self.enabled and stage in self.totals:
            self._draw(stage, end="\n")

    def _draw(self, stage: str, end: str = "") -> None:
        if not self.enabled:
            return
        total, done = self.totals[stage], self.done[stage]
        width = 24
        filled = int(width * done / total) if total else 0
        el = time.perf_counter() - self.t0[stage]
        self.stream.write(f"\r{stage:<18} [{'#' * filled}{'.' * (width - filled)}] {done}/{total or '?'} {el:6.1f}s{end}")
        self.stream.flush()

    def note(self, text: str) -> None:
        if self.enabled:
            self.stream.write(text + "\n")
            self.stream.flush()
