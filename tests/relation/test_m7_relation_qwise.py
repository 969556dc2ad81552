"""M7: parity holds on relation data, q by q: each q's trials follow the rule, and its stages and goldens match.

Tiers, run in order: ``pytest -m m7 --q-list Q1`` (smoke), ``--q-list Q1,Q3,Q5`` (a few), ``--q-list all``.
``-n auto`` spreads the qs over workers, each loading the model once.
"""

from __future__ import annotations

import pytest

from fv.parity.golden import GOLDEN_ARTIFACTS
from fv.pytest_plugin import assert_golden, parity_for
from fv.runtime.trials import load_trials
from tests.support.relation_inputs import relation_csv, relation_trials_file

pytestmark = pytest.mark.m7
N_DEMOS = 9


@pytest.fixture(scope="session")
def relation_trials(fv_options, fv_model, relation_trials_made):
    """(the all-q trials, {q: its trials file}, the CSV's rows by q or None): made once per model and inputs by fv's
    own rule, as ``fv relation`` makes them (``fv.pipelines.relation.prepare_trials``). From a user's sampled-trials
    file: exactly its trials, their draws checked when a CSV is given. From a CSV: drawn for every q of the file,
    whichever qs are selected (one q's draws depend on the qs drawn before it, so a q's trials, and goldens, never
    change with --q-list)."""
    users = relation_trials_file(fv_options)
    key = (fv_model.name, str(users or relation_csv(fv_options, fv_model.path)), fv_options.n_trials_per_q)

    def make():
        from fv.io import read_json
        from fv.pipelines.relation import RelationConfig, per_q_trials_name, prepare_trials
        from fv.runtime.datasets import load_relation_csv

        csv = relation_csv(fv_options, fv_model.path) if fv_options.relation_csv or not users else None
        cfg = RelationConfig(relation_csv=str(csv or ""), out=str(fv_options.out_root / "_m7_trials" / fv_model.name),
                             n_trials_per_q=fv_options.n_trials_per_q, n_demos=N_DEMOS, seed=0,
                             fixed_trials=str(users) if users else None)
        qs, _, root = prepare_trials(cfg, fv_model.tokenizer, fv_model.name, fv_model.prepend_bos)
        per_q = {q: load_trials(root / q / per_q_trials_name(cfg, q)) for q in qs}
        return read_json(root / "fixed_trials_all_q.json"), per_q, load_relation_csv(csv) if csv else None

    return relation_trials_made.get(key, make)


def _q(relation_trials, q_id):
    raw, per_q, groups = relation_trials
    skipped = {s["q_id"]: s for s in raw["meta"]["skipped_qs"]}
    if q_id in skipped:
        pytest.skip(f"{q_id} skipped by the trials rule: {skipped[q_id]['n_rows']} rows, {skipped[q_id]['reason']}")
    if q_id not in per_q:
        pytest.fail(f"{q_id} has no trials in {raw['meta'].get('relation_csv') or 'the trials file'}; it has {sorted(per_q)}",
                    pytrace=False)
    return per_q[q_id], (groups or {}).get(q_id)


def test_q_trials_follow_the_rule(relation_trials, q_id, fv_options):
    ft, rows = _q(relation_trials, q_id)
    if rows is None:
        pytest.skip("a user's trials file without --relation-csv: nothing to check its draws against")
    assert len(ft.trials) == relation_trials[0]["meta"].get("n_trials_per_q", fv_options.n_trials_per_q)
    for t in ft.raw["trials"]:
        assert t["q_id"] == q_id
        qi, demos = t["query_source_index"], t["demo_source_indices"]
        assert qi not in demos and len(demos) == N_DEMOS == len(set(demos))
        assert sorted(t["demo_order"]) == sorted(i for i in range(len(rows)) if i != qi)
        assert t["demo_order"][:N_DEMOS] == demos
        assert [(d["input"], d["output"]) for d in t["demos_clean"]] == [rows[i] for i in demos]
        clean_out = [d["output"] for d in t["demos_clean"]]
        corr_out = [d["output"] for d in t["demos_corrupted"]]
        assert sorted(corr_out) == sorted(clean_out)
        assert t["query"] == {"input": rows[qi][0], "output": rows[qi][1]}
        assert t["prompt_data_clean"]["query_target"] == {"input": " " + rows[qi][0], "output": " " + rows[qi][1]}


def test_small_qs_are_skipped_and_listed(relation_trials):
    raw, _, groups = relation_trials
    if groups is None:
        pytest.skip("a user's trials file without --relation-csv: nothing to check its skipped qs against")
    for s in raw["meta"]["skipped_qs"]:
        assert s["n_rows"] == len(groups[s["q_id"]]) < N_DEMOS + 1
    assert not {s["q_id"] for s in raw["meta"]["skipped_qs"]} & set(raw["meta"]["q_ids"])


@pytest.fixture
def q_parity(relation_trials, q_id, fv_model, fv_options):
    """The q's parity run: the live reference when there is one, else the q's goldens (made by the reference)."""
    ft, _ = _q(relation_trials, q_id)
    return parity_for(fv_options, fv_model, ft)


def test_q_parity(q_parity, q_id):
    """Prompt, slot, mean activations, indirect effect, top heads, FV and injection: mismatch_count == 0 per stage."""
    run = q_parity
    counts = {s.name: s.mismatch_count for s in run.result.stages}
    assert sum(counts.values()) == 0, f"{q_id}: {counts}; earliest failed stage {run.result.earliest_failed_stage}\n" + \
        "\n".join(s.summary(5) for s in run.result.stages if s.status == "FAIL")
    if run.source == "reference" and run.tolerance.name == "exact":
        assert all(s.max_abs_diff == 0.0 for s in run.result.stages), {s.name: s.max_abs_diff for s in run.result.stages}


@pytest.mark.parametrize("artifact", list(GOLDEN_ARTIFACTS))
def test_q_golden(q_parity, snapshot, request, artifact):
    """The q's goldens: written from the live reference with --snapshot-update, else fv compared with them."""
    assert_golden(q_parity, artifact, snapshot, request.config.option.update_snapshots)
