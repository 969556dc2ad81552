"""q ids for M7 come from the relation CSV at collection time, so each q is its own test."""

from __future__ import annotations

from pathlib import Path

from fv.pytest_plugin import FVOptions, default_relation_csv


def relation_csv(opts: FVOptions) -> Path:
    return Path(opts.relation_csv) if opts.relation_csv else default_relation_csv()


def selected_qs(opts: FVOptions) -> list[str]:
    from fv.runtime.datasets import load_relation_csv

    groups = load_relation_csv(relation_csv(opts))
    if opts.q_list in (None, "", "all"):
        return sorted(groups)
    return [q.strip() for q in opts.q_list.split(",") if q.strip()]


def pytest_generate_tests(metafunc):
    if "q_id" in metafunc.fixturenames:
        opts = FVOptions.of(metafunc.config)
        metafunc.parametrize("q_id", selected_qs(opts))
