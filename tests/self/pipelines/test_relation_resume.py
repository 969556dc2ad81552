"""fv relation's own resume rules on the tiny models (fv checking itself): resumed and multi-worker runs write the
same bytes, a failed q is recorded while the others go on, and growing the q-list recomputes nothing completed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.m7


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.first_pair
def test_resume_and_workers_give_byte_identical_outputs(tmp_path, monkeypatch, fv_model_name, fv_options):
    """An uninterrupted run on two workers and a run killed after its first q and resumed on one worker write
    the same bytes, file for file."""
    from fv.paths import FIXTURES
    from fv.pipelines.relation import RelationConfig, read_status, relation_root, run_relation

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
    import fv.pipelines.relation as relation

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
    """A q's identity is its model, trials and parameters, not the other qs of the run: trials are drawn for every q
    of the CSV and the listed qs taken from that draw, so growing --q-list with a q that sorts before the old one
    (Q10 < Q2) and one after it (Q4) leaves the completed q's files untouched (bytes and time stamps), its trials
    are the whole-CSV draw's, and the log says it was reused. A q left 'running' by a killed process is reported
    as resumed."""
    import json

    from fv.paths import FIXTURES
    from fv.pipelines.relation import RelationConfig, q_trials_path, read_status, relation_root, run_relation
    from fv.pytest_plugin import load_session_model
    from fv.runtime.trials import make_relation_trials

    cfg = RelationConfig(relation_csv=str(FIXTURES / "relation_tiny.csv"), out=str(tmp_path), model=fv_model_name,
                         device=fv_options.device, n_trials_per_q=1, edit_layers="9", q_list=["Q2"])
    run_relation(cfg)
    root = relation_root(cfg)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted((root / "Q2").rglob("*")) if p.is_file()}
    assert read_status(root, "Q10")["status"] == "pending"
    whole = json.loads(json.dumps(make_relation_trials(cfg.relation_csv, load_session_model(fv_options, fv_model_name).tokenizer, 1,
                                                       cfg.n_demos, cfg.seed, None)))
    assert json.loads(q_trials_path(root, "Q2").read_text())["trials"] == [t for t in whole["trials"] if t["q_id"] == "Q2"]
    cfg.q_list = ["Q10", "Q2", "Q4"]
    lines: list[str] = []
    summary = run_relation(cfg, log=lines.append)
    assert summary["reused"] == ["Q2"], lines
    assert summary["status"] == {"Q10": "completed", "Q2": "completed", "Q4": "completed"}
    assert "Q2: reused (completed earlier with the same model, trials and parameters)" in lines
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted((root / "Q2").rglob("*")) if p.is_file()}
    assert after == before
    for q in cfg.q_list:  # every q's trials are its part of the whole-CSV draw, whichever qs were listed
        assert json.loads(q_trials_path(root, q).read_text())["trials"] == [t for t in whole["trials"] if t["q_id"] == q]
    # a q left 'running' by a killed run is taken over and reported as resumed
    status_file = root / "Q4" / "qid_status.json"
    status_file.write_text(json.dumps({**json.loads(status_file.read_text()), "status": "running", "pid": 999999}))
    lines.clear()
    run_relation(cfg, log=lines.append)
    assert any(line.startswith("Q4: resumed") for line in lines), lines


@pytest.mark.first_pair
def test_growing_the_q_list_leaves_a_completed_qs_pictures_untouched(tmp_path, fv_model_name, fv_options):
    """Issue 30, item 8: `fv relation` with --q-list A, then A,B: A's data files and its two pictures keep their
    bytes and time stamps (a picture records a digest of what it was drawn from and is drawn only when that
    changes); B's pictures are drawn, and so is the all-q picture, whose inputs grew."""
    pytest.importorskip("matplotlib")
    from fv.cli import main
    from fv.paths import FIXTURES
    from fv.plots import ALL_Q_PNG, IE_PNG, SWEEP_PNG, recorded_digest

    def relation(q_list: str) -> int:
        return main(["relation", "--relation-csv", str(FIXTURES / "relation_tiny.csv"), "--model", fv_model_name,
                     "--device", fv_options.device or "auto", "--q-list", q_list, "--n-trials-per-q", "1",
                     "--edit-layers", "8-9", "--out", str(tmp_path), "--quiet"])

    def stamps(folder: Path) -> dict:
        return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
                if p.is_file() and not p.name.startswith(".fv")}

    assert relation("Q2") == 0
    root = tmp_path / "relation_tiny"
    pictures = [root / "Q2" / IE_PNG, root / "Q2" / SWEEP_PNG]
    assert all(p.is_file() and recorded_digest(p) for p in pictures)
    before, grid = stamps(root / "Q2"), (root / ALL_Q_PNG).read_bytes()
    assert relation("Q2,Q4") == 0
    assert stamps(root / "Q2") == before  # data files and pictures: same bytes, same time stamps
    assert (root / "Q4" / IE_PNG).is_file() and (root / "Q4" / SWEEP_PNG).is_file()
    assert (root / ALL_Q_PNG).read_bytes() != grid  # the all-q picture now has Q4's panel
    # a picture that no longer records its inputs' digest (here: overwritten) is drawn again, to the same bytes
    (root / "Q2" / IE_PNG).write_bytes(b"not the picture")
    assert relation("Q2,Q4") == 0
    assert (root / "Q2" / IE_PNG).read_bytes() == before[Path(IE_PNG)][0]
    assert (root / "Q2" / SWEEP_PNG).stat().st_mtime_ns == before[Path(SWEEP_PNG)][1]
