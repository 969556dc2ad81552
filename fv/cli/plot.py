"""``fv plot``: redraw every picture of a results folder from its artifacts alone."""

from __future__ import annotations

import argparse


def cmd_plot(a: argparse.Namespace) -> int:
    from fv.plots import redraw

    paths = redraw(a.results_dir)
    for p in paths:
        print(p)
    print(f"{len(paths)} pictures")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - argparse exposes no public type
    p = sub.add_parser("plot", help="redraw the pictures of a results folder from its artifacts",
                       description="Find every fv run, relation run and diff report under RESULTS_DIR and redraw their "
                                   "PNG pictures from the artifacts alone. Needs matplotlib: pip install 'fv[plots]'.")
    p.add_argument("results_dir", help="a folder written by fv run, fv relation or fv diff (searched recursively)")
    p.set_defaults(func=cmd_plot)
