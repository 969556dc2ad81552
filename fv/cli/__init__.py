"""The ``fv`` command line: one module per command group, each registering its subcommands.

``fv <command> --help`` tells more. Every user-facing failure is an ``FVError``, printed as one line; the exit
codes are the same in every command (``fv.errors``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from fv.errors import EXIT_INTERRUPTED, EXIT_USAGE, FVError

EXIT_CODES = ("exit codes: 0 done, every check passed; 1 a check failed or the command stopped on an error; 2 a usage "
              "error (options that cannot go together, a value out of range); 4 a refusal at the door (inputs the "
              "reference cannot run); 130 interrupted.")

# command groups in the order of the M0-M7 plan
GROUPS = ("trials", "reference", "run", "diff", "relation", "universal", "gate", "golden", "plot", "doctor", "models")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    p = argparse.ArgumentParser(prog="fv", description="Function vectors: a runtime and a parity suite against the reference src/.",
                                epilog=EXIT_CODES)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in GROUPS:
        importlib.import_module(f"fv.cli.{name}").register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except FVError as exc:
        print(f"fv {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"fv {args.command}: interrupted; finished artifacts are complete, rerun with --resume to go on", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
