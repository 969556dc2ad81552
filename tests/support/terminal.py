"""The ``fv parity`` section of pytest's terminal summary, rendered for given parity results (no pytest session)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import torch

from fv.parity.compare import FP32


class _Terminal:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def section(self, title, sep="-") -> None:
        self.lines.append(f"--- {title} ---")

    def write_line(self, line, **_kw) -> None:
        self.lines.append(line)


def terminal_table(result, tol=FP32, copies: int = 1) -> list[str]:
    """The ``fv parity`` section pytest prints for ``copies`` runs with this result (more than 8: no tables)."""
    from fv.pytest_plugin.summary import GateLedger, parity_summary, write_summary

    ledger = GateLedger()
    for i in range(copies):
        name = "tiny-x" if i == 0 else f"tiny-x{i}"
        run = SimpleNamespace(lm=SimpleNamespace(name=name, dtype=torch.float32, attn_implementation="sdpa"),
                              trials=SimpleNamespace(id="trials-x"), result=result, other_side="goldens", tolerance=tol,
                              report_paths={}, sides={})
        ledger.runs[(name, "trials-x", "")] = json.loads(json.dumps(parity_summary(run)))  # as it crosses xdist
    term = _Terminal()
    write_summary(term, ledger)
    return term.lines
