"""Subcommands added by later milestones (diff, relation, doctor); kept apart so cli.py stays readable."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - argparse exposes no public type
    return None
