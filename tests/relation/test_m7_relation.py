"""M7: what holds on antonym holds on relation data, q by q.

Tiers, run in order: ``pytest -m m7 --q-list Q1`` (smoke), ``--q-list Q1,Q3,Q5`` (a few), ``--q-list all``.
``-n auto`` spreads the qs over workers, each loading the model once.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fv.parity.golden import GOLDEN_ARTIFACTS
from fv.pytest_plugin import assert_golden, parity_for
from fv.runtime.trials import load_trials, make_relation_trials, plan_relation_qs, save_trials
from tests.relation.conftest import relation_csv, relation_trials_file

pytestmark = pytest.mark.m7
N_DEMOS = 9
_CACHE: dict = {}


@pytest.fixture(scope="session")
def relation_trials(fv_options, fv_model):
    """The all-q trials file, made once per model, and one trials file per q."""

    users = relation_trials_file(fv_options)
    key = (fv_model.name, str(users or relation_csv(fv_options)), fv_options.n_trials_per_q)
    if key not in _CACHE:
        from fv.runtime.datasets import load_relation_csv

        if users:  # a user's sampled-trials file: exactly its trials; its draws are checked when a CSV is given
            from fv.runtime.relation import read_relation_trials

            raw = read_relation_trials(users)
            csv, stem = (relation_csv(fv_options) if fv_options.relation_csv else None), users.stem
            name = lambda q: f"fixed_trials_{stem}_{q}_{fv_model.name}.json"  # noqa: E731
        else:
            csv = relation_csv(fv_options)
            stem = csv.stem
            # trials are drawn for every q of the file, whichever qs are selected: one q's draws depend on the qs
            # drawn before it, so a q's trials (and goldens) must not change with --q-list
            raw = make_relation_trials(csv, fv_model.tokenizer, fv_options.n_trials_per_q, N_DEMOS, 0, None,
                                       model_name_for_tokenizer=fv_model.name, model_prepend_bos=fv_model.prepend_bos)
            name = lambda q: f"fixed_trials_{stem}_{q}_t{fv_options.n_trials_per_q}_d{N_DEMOS}_seed0_{fv_model.name}.json"  # noqa: E731
        groups = load_relation_csv(csv) if csv else None
        root = fv_options.out_root / stem / "_m7_trials" / fv_model.name
        save_trials(root / "fixed_trials_all_q.json", raw)
        per_q = {}
        for q in raw["meta"]["q_ids"]:
            p = root / name(q)
            save_trials(p, {"meta": {**raw["meta"], "q_id": q}, "trials": [t for t in raw["trials"] if t["q_id"] == q]})
            per_q[q] = load_trials(p)
        _CACHE[key] = (raw, per_q, groups)
    return _CACHE[key]


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


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.first_pair
def test_resume_and_workers_give_byte_identical_outputs(tmp_path, monkeypatch, fv_model_name, fv_options):
    """An uninterrupted run on two workers and a run killed after its first q and resumed on one worker write
    the same bytes, file for file."""
    from fv.runtime.relation import RelationConfig, read_status, relation_root, run_relation
    from fv.paths import FIXTURES

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    out = tmp_path / "rel"
    cfg = RelationConfig(relation_csv=str(FIXTURES / "relation_tiny.csv"), out=str(out), model=fv_model_name,
                         device=fv_options.device, dtype=fv_options.dtype, n_trials_per_q=2, edit_layers="8-9",
                         q_list=["Q1", "Q2", "Q3", "Q4"], workers=2)
    run_relation(cfg)
    uninterrupted = _tree(out)
    shutil.rmtree(out)

    class Killed(Exception):
        pass

    def kill(q):
        raise Killed(q)

    cfg.workers = 1
    with pytest.raises(Killed):
        run_relation(cfg, after_q=kill)
    root = relation_root(cfg)
    states = {q: read_status(root, q)["status"] for q in ("Q1", "Q2", "Q3", "Q4")}
    assert states == {"Q1": "completed", "Q2": "pending", "Q3": "skipped", "Q4": "pending"}
    done_before = (root / "Q1" / "mean_activations.pt").stat().st_mtime_ns
    summary = run_relation(cfg)
    assert summary["status"] == {"Q1": "completed", "Q2": "completed", "Q4": "completed"}
    assert (root / "Q1" / "mean_activations.pt").stat().st_mtime_ns == done_before, "a completed q was redone"
    resumed = _tree(out)
    assert sorted(resumed) == sorted(uninterrupted)
    differ = [k for k in uninterrupted if uninterrupted[k] != resumed[k]]
    assert differ == [], differ


@pytest.mark.first_pair
def test_failed_q_is_recorded_and_others_go_on(tmp_path, monkeypatch, fv_model_name, fv_options):
    import fv.runtime.relation as relation

    orig = relation.run_q

    def flaky(lm, cfg, root, q, *a, **k):
        if q == "Q2":
            raise RuntimeError("injected failure")
        return orig(lm, cfg, root, q, *a, **k)

    monkeypatch.setattr(relation, "run_q", flaky)
    from fv.paths import FIXTURES

    cfg = relation.RelationConfig(relation_csv=str(FIXTURES / "relation_tiny.csv"), out=str(tmp_path), model=fv_model_name,
                                  n_trials_per_q=1, edit_layers="9", q_list=["Q1", "Q2"])
    summary = relation.run_relation(cfg)
    assert summary["failed"] == ["Q2"] and summary["status"]["Q1"] == "completed"
    st = relation.read_status(relation.relation_root(cfg), "Q2")
    assert st["status"] == "failed" and "injected failure" in st["error"]
    cfg.stop_on_error = True
    with pytest.raises(RuntimeError, match="injected failure"):
        relation.run_relation(cfg)


@pytest.mark.first_pair
def test_growing_the_q_list_reuses_completed_qs(tmp_path, fv_model_name, fv_options):
    """A q's identity is its model, trials and parameters, not the other qs of the run: growing --q-list leaves
    a completed q's files untouched (bytes and time stamps) and the log says it was reused. A q left 'running'
    by a killed process is reported as resumed."""
    from fv.paths import FIXTURES
    from fv.runtime.relation import RelationConfig, read_status, relation_root, run_relation

    cfg = RelationConfig(relation_csv=str(FIXTURES / "relation_tiny.csv"), out=str(tmp_path), model=fv_model_name,
                         device=fv_options.device, n_trials_per_q=1, edit_layers="9", q_list=["Q1"])
    run_relation(cfg)
    root = relation_root(cfg)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted((root / "Q1").rglob("*")) if p.is_file()}
    st = read_status(root, "Q2")
    assert st["status"] == "pending"
    cfg.q_list, cfg.model = ["Q1", "Q2"], "tiny-llama" if fv_model_name == "tiny-llama" else fv_model_name
    lines: list[str] = []
    summary = run_relation(cfg, log=lines.append)
    assert summary["reused"] == ["Q1"] and summary["status"] == {"Q1": "completed", "Q2": "completed"}
    assert "Q1: reused (completed earlier with the same model, trials and parameters)" in lines
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted((root / "Q1").rglob("*")) if p.is_file()}
    assert after == before
    # a q left 'running' by a killed run is taken over and reported as resumed
    import json

    status_file = root / "Q2" / "qid_status.json"
    status_file.write_text(json.dumps({**json.loads(status_file.read_text()), "status": "running", "pid": 999999}))
    lines.clear()
    run_relation(cfg, log=lines.append)
    assert any(line.startswith("Q2: resumed") for line in lines), lines
