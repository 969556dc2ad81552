"""``fv results plot`` (earlier ``fv plot``): redraw every picture of a results folder from its artifacts alone."""

from __future__ import annotations

import argparse

from fv.cli.common import add_noun


def cmd_plot(a: argparse.Namespace) -> int:
    from fv.plots import redraw

    paths = redraw(a.results_dir)
    for p in paths:
        print(p)
    print(f"{len(paths)} pictures")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - argparse exposes no public type
    verbs = add_noun(sub, "results", help="plot: redraw the pictures of a results folder from its artifacts",
                     description="What the runs wrote. Earlier spelling: fv plot.")
    p = verbs.add_parser("plot", help="redraw the pictures of a results folder from its artifacts (alias: fv plot)",
                         description="Find every fv run, relation run and diff report under RESULTS_DIR and redraw their "
                                   "PNG pictures from the artifacts alone. Needs matplotlib: pip install 'fv[plots]'.")
    p.add_argument("results_dir", help="a folder written by fv runtime run, fv relation run or fv parity diff (searched recursively)")
    p.set_defaults(func=cmd_plot)
