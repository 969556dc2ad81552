"""The ``fv`` command line: one module per command group, each registering its subcommands.

``fv <command> --help`` tells more. Every user-facing failure is an ``FVError``, printed as one line.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from fv.errors import FVError

# command groups in the order of the M0-M7 plan
GROUPS = ("trials", "reference", "run", "diff", "relation", "universal", "gate", "golden", "plot", "doctor", "models")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    p = argparse.ArgumentParser(prog="fv", description="Function vectors: a runtime and a parity suite against the reference src/.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in GROUPS:
        importlib.import_module(f"fv.cli.{name}").register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FVError as exc:
        print(f"fv {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fv {args.command}: interrupted; finished artifacts are complete, rerun with --resume to go on", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
