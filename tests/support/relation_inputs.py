"""M7's inputs as the session's options name them: the relation CSV, a user's sampled-trials file (``--fixed-trials``
holding relation trials) and the qs selected (``--q-list``), read at collection time so each q is its own test."""

from __future__ import annotations

from pathlib import Path

from fv.pytest_plugin import FVOptions, default_relation_csv


def relation_csv(opts: FVOptions, model=None) -> Path:
    """``--relation-csv``, else ``model``'s default relation CSV (a name or folder; ``fv.model.default_inputs``)."""
    return Path(opts.relation_csv) if opts.relation_csv else default_relation_csv(model)


def relation_trials_file(opts: FVOptions) -> Path | None:
    """``--fixed-trials`` when it is a relation file (trials with q_id): M7 then runs on exactly its trials."""
    import json

    if not opts.fixed_trials:
        return None
    trials = json.loads(Path(opts.fixed_trials).read_text(encoding="utf-8-sig")).get("trials") or [{}]
    return Path(opts.fixed_trials) if isinstance(trials[0], dict) and "q_id" in trials[0] else None


def selected_qs(opts: FVOptions) -> list[str]:
    """The qs M7's per-q tests are parametrized by: ``--q-list``, else every q of the trials file or the CSV."""
    from fv.runtime.datasets import load_relation_csv

    if relation_trials_file(opts):
        from fv.pipelines.relation import read_relation_trials

        qs = read_relation_trials(relation_trials_file(opts))["meta"]["q_ids"]
        return qs if opts.q_list in (None, "", "all") else [q.strip() for q in opts.q_list.split(",") if q.strip()]
    if opts.q_list not in (None, "", "all"):
        return [q.strip() for q in opts.q_list.split(",") if q.strip()]
    if opts.relation_csv:
        return sorted(load_relation_csv(relation_csv(opts)))
    # each model's default CSV, in the session's order of models; a model paired with another's q is deselected
    # (fv.pytest_plugin.options.belongs)
    models = [*opts.models, *opts.unavailable]
    return list(dict.fromkeys(q for m in models for q in sorted(load_relation_csv(relation_csv(opts, m)))))
