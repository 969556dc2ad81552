"""The ``fv`` command line: one grammar, a noun then a verb (``fv trials make``, ``fv relation status``); one module
per noun, each registering its verbs.

The spellings of earlier releases (``fv make-trials``, ``fv run``, a bare ``fv relation --relation-csv ...``) stay
accepted, with the same options, output and exit codes: ``canonical_argv`` rewrites them to the noun and verb they
stand for before argparse sees them (``ALIASES``, ``DEFAULT_VERBS``), and ``fv --help`` lists them.

``fv <noun> --help`` lists a noun's verbs, ``fv <noun> <verb> --help`` its options. Every user-facing failure is an
``FVError``, printed as one line; a usage error is one line too (``fv.cli.common.Parser``); the exit codes are the
same in every command (``fv.errors``).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Sequence

from fv.cli.common import Parser
from fv.errors import EXIT_INTERRUPTED, EXIT_USAGE, FVError

EXIT_CODES = ("exit codes: 0 done, every check passed; 1 a check failed or the command stopped on an error; 2 a usage "
              "error (options that cannot go together, a value out of range); 4 a refusal at the door (inputs the "
              "reference cannot run); 130 interrupted.")

# the nouns, in the order of the M0-M7 plan: (noun, the fv.cli module registering it)
NOUNS = (("trials", "trials"), ("reference", "reference"), ("runtime", "run"), ("parity", "diff"), ("port", "port"), ("relation", "relation"),
         ("universal", "universal"), ("gate", "gate"), ("golden", "golden"), ("results", "plot"), ("env", "doctor"),
         ("model", "models"))
GROUPS = tuple(module for _noun, module in NOUNS)

# the earlier one-word spellings: the noun and verb each stands for
ALIASES = {"make-trials": ("trials", "make"), "verify-trials": ("trials", "verify"), "run": ("runtime", "run"),
           "diff": ("parity", "diff"), "plot": ("results", "plot"), "doctor": ("env", "check"),
           "build-model": ("model", "build")}
# the nouns that ran without a verb before: followed by an option (or nothing), they run this verb
DEFAULT_VERBS = {"reference": "run", "relation": "run", "universal": "run"}


def canonical_argv(argv: Sequence[str]) -> tuple[list[str], str]:
    """``argv`` in the noun-verb grammar, and the command's name as the user spelled it (for its messages).

    ``make-trials ...`` becomes ``trials make ...`` (``ALIASES``); ``relation --relation-csv ...`` (a noun of
    ``DEFAULT_VERBS`` followed by an option or by nothing) becomes ``relation run --relation-csv ...``, while
    ``relation status OUT``, ``relation --help`` and a mistyped verb are left for argparse. Anything else is
    returned unchanged."""
    argv = list(argv)
    if not argv:
        return argv, ""
    head, rest = argv[0], argv[1:]
    if head in ALIASES:
        return [*ALIASES[head], *rest], head
    if head in DEFAULT_VERBS and (not rest or (rest[0].startswith("-") and rest[0] not in ("-h", "--help"))):
        return [head, DEFAULT_VERBS[head], *rest], head
    if rest and not rest[0].startswith("-"):
        return argv, f"{head} {rest[0]}"
    return argv, head


def _aliases_help() -> str:
    rows = [(f"fv {old}", f"fv {noun} {verb}") for old, (noun, verb) in ALIASES.items()]
    rows += [(f"fv {noun} [options]", f"fv {noun} {verb} [options]") for noun, verb in DEFAULT_VERBS.items()]
    width = max(len(old) for old, _new in rows)
    return "\n".join(["aliases: the earlier spellings, still accepted (same options, output and exit codes):"]
                     + [f"  {old:<{width}}  = {new}" for old, new in rows])


def build_parser() -> argparse.ArgumentParser:
    import importlib

    p = Parser(prog="fv", formatter_class=argparse.RawDescriptionHelpFormatter,
               description="Function vectors: a runtime and a parity suite against the reference src/.\n\n"
                           "A command is a noun and a verb: fv NOUN VERB [options]. `fv NOUN --help` lists a noun's verbs,\n"
                           "`fv NOUN VERB --help` its options.",
               epilog=_aliases_help() + "\n\n" + textwrap.fill(EXIT_CODES, width=100))
    sub = p.add_subparsers(dest="command", metavar="NOUN", title="commands (fv NOUN VERB)")
    for name in GROUPS:
        importlib.import_module(f"fv.cli.{name}").register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv, name = canonical_argv(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    name = name or args.command
    args.cli_name = name  # the command as the user spelled it, for its messages: `fv make-trials: error: ...`
    try:
        return int(args.func(args) or 0)
    except FVError as exc:
        print(f"fv {name}: error: {str(exc).removeprefix(f'fv {name}: ')}", file=sys.stderr)  # the name once
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"fv {name}: interrupted; finished artifacts are complete, rerun with --resume to go on", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
