"""Issue 15, concurrent runs: one writer per output folder. Two real processes started on one folder at once: one
writes all its files, the other refuses in one line naming the holder, and no file of the folder is from the
loser. A lock left by a killed process is detected and taken over with a note. ``fv run`` and ``fv relation``
take the same lock; the files a relation run's tasks share are updated without losing one another's updates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import fv
from fv.errors import FVError
from fv.lock import HOLDER_NAME, LOCK_NAME, output_lock, read_holder
from tests.support.cli import RUN_ARGS, assert_one_line_failure, run_cli
from tests.support.tiny_trials import base_trials

N_FILES = 8
# A minimal writer, driven line by line by the test on its stdin (nothing here depends on timing): says "ready"
# and waits for a line (so two writers reach the lock together), takes the folder's lock, says "locked", writes N
# files, each naming the writer, says "written", and holds the lock until the test sends another line (or closes
# its stdin).
WRITER = r"""
import os, sys
from pathlib import Path
from fv.errors import FVError
from fv.io import write_text
from fv.lock import output_lock
folder, tag, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
try:
    with output_lock(folder, command=f"writer {tag}"):
        print("locked", flush=True)
        for i in range(n):
            write_text(folder / f"part{i}.txt", f"{tag} {os.getpid()} {i}\n")
        print("written", flush=True)
        sys.stdin.readline()
except FVError as exc:
    print(f"writer {tag}: error: {exc}", file=sys.stderr)
    sys.exit(2)
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(Path(fv.__file__).resolve().parent.parent)}


def _writer(folder: Path, tag: str, go: bool = True) -> subprocess.Popen:
    """A WRITER process once it is ready; with ``go`` it is let go at once (it then takes the lock and holds it)."""
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(folder), tag, str(N_FILES)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    assert p.stdout.readline().strip() == "ready", p.stderr.read() if p.poll() is not None else ""
    if go:
        _tell(p)
    return p


def _tell(p: subprocess.Popen) -> None:
    """One line on the process's stdin: ``go`` to a ready writer, ``release`` to one holding its lock."""
    p.stdin.write("next\n")
    p.stdin.flush()


def _wait_locked(p: subprocess.Popen) -> None:
    """Until the writer holds its lock with its files written."""
    lines = [p.stdout.readline().strip() for _ in range(2)]
    assert lines == ["locked", "written"], (lines, p.stderr.read() if p.poll() is not None else "")


def _written_by(folder: Path) -> set[str]:
    return {(folder / f"part{i}.txt").read_text().split()[0] for i in range(N_FILES)}


def test_two_writers_at_once_one_writes_everything_the_other_refuses_naming_it(tmp_path):
    folder = tmp_path / "out"
    procs = {tag: _writer(folder, tag, go=False) for tag in ("A", "B")}  # both ready: let go together
    for p in procs.values():
        _tell(p)
    # the winner says "locked" and holds the lock until released; the loser ends without a word on stdout
    first = {tag: p.stdout.readline().strip() for tag, p in procs.items()}
    winners = [t for t, line in first.items() if line == "locked"]
    assert len(winners) == 1, first
    win, lose = winners[0], ({"A", "B"} - set(winners)).pop()
    assert procs[win].stdout.readline().strip() == "written"
    _tell(procs[win])
    results = {tag: (p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for tag, p in procs.items()}
    assert results[win][0] == 0, results
    rc, _, err = results[lose]
    line = assert_one_line_failure(rc, err, "is in use by", f"pid {procs[win].pid}", f"`writer {win}`", "host")
    assert "choose another --out" in line
    assert _written_by(folder) == {win}, "files of the refused writer reached the folder"
    assert not (folder / HOLDER_NAME).exists()
    # once the first is done, the second goes through and replaces every file: nothing lost, nothing mixed
    again = _writer(folder, lose)
    _wait_locked(again)
    _tell(again)
    assert again.wait(timeout=120) == 0, again.stderr.read()
    assert _written_by(folder) == {lose}


def test_a_killed_writers_lock_is_detected_and_taken_over(tmp_path):
    folder = tmp_path / "out"
    p = _writer(folder, "K")
    _wait_locked(p)
    held = read_holder(folder)
    assert held["pid"] == p.pid and held["command"] == "writer K"
    with pytest.raises(FVError, match=rf"in use by pid {p.pid} on host .*`writer K`"):
        with output_lock(folder, command="second"):
            pass
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    assert read_holder(folder)["pid"] == p.pid  # the record outlives its process
    notes: list[str] = []
    with output_lock(folder, command="after", note=notes.append):
        assert read_holder(folder)["pid"] == os.getpid()
    assert len(notes) == 1 and f"pid {p.pid}" in notes[0] and "no longer running" in notes[0], notes
    assert read_holder(folder) is None and (folder / LOCK_NAME).exists()


def test_fv_run_refuses_a_held_folder_before_the_model_loads(tmp_path, monkeypatch):
    import fv.model.loading

    def no_load(*a, **k):
        raise AssertionError("fv run loaded the model although its output folder is held")

    monkeypatch.setattr(fv.model.loading, "load_model", no_load)
    folder = tmp_path / "out"
    trials = tmp_path / "t.json"
    trials.write_text(json.dumps(base_trials("icl")))
    p = _writer(folder, "H")
    try:
        _wait_locked(p)
        rc, _, err = run_cli(["run", "--fixed-trials", str(trials), "--out", str(folder), *RUN_ARGS])
        assert_one_line_failure(rc, err, f"output folder {folder} is in use by pid {p.pid}", "`writer H`")
        theirs = {LOCK_NAME, HOLDER_NAME} | {f"part{i}.txt" for i in range(N_FILES)}
        assert {x.name for x in folder.iterdir()} <= theirs  # the refused run wrote nothing there
    finally:
        p.kill()
        p.wait(timeout=30)


def test_a_failed_command_leaves_no_lock_in_a_folder_it_created(tmp_path):
    folder = tmp_path / "new"
    with pytest.raises(RuntimeError):
        with output_lock(folder):
            raise RuntimeError("stage failed")
    assert not folder.exists()


# ---- fv relation: one command per relation folder, one process per q folder, shared files never lose an update --

REL_ARGS = ["--q-list", "Q1", "--n-trials-per-q", "1", "--model", "tiny-llama", "--device", "cpu", "--no-plots"]
# One process of a relation run's array: updates its own qs' status many times, each a read-modify-write of the
# status file and of the all-q summary under the state lock; after each round it checks that the summary still
# says what it wrote for its qs (another process's stale read-modify-write would have put an older value back).
UPDATER = r"""
import json, sys
from pathlib import Path
from fv.pipelines.relation import SUMMARY, update_status
root, qs, n = Path(sys.argv[1]), sys.argv[2].split(","), int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
lost = 0
for i in range(n):
    state = "completed" if i % 2 else "running"
    for q in qs:
        update_status(root, q, lambda st: {"q_id": st["q_id"], "status": state, "inputs": {}, "best_layer": i})
    s = json.loads((root / SUMMARY).read_text())
    lost += sum(s["status"][q] != state or (state == "completed" and s["best_layer"].get(q) != i) for q in qs)
print(lost)
"""


def _race(script: str, args: dict[str, list[str]]) -> dict[str, str]:
    """``script`` in one process per tag, all let go at once (a line on each stdin, once every one has said
    "ready"); the last line each printed, once all succeeded."""
    procs = {t: subprocess.Popen([sys.executable, "-c", script, *a], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=_env()) for t, a in args.items()}
    for t, p in procs.items():
        assert p.stdout.readline().strip() == "ready", (t, p.stderr.read() if p.poll() is not None else "")
    for p in procs.values():
        _tell(p)
    out = {t: p.communicate(timeout=300) for t, p in procs.items()}
    assert all(p.returncode == 0 for p in procs.values()), {t: err for t, (_, err) in out.items()}
    return {t: o.strip().splitlines()[-1] for t, (o, _) in out.items()}


# ``fv relation`` whose every q, once its status says running, prints "held <q>" and waits for a line on stdin
HELD_RELATION = r"""
import sys
import fv.pipelines.relation as relation
from fv.cli import main
run_q = relation.run_q
def held(lm, cfg, root, q, *a, **k):
    print(f"held {q}", flush=True)
    sys.stdin.readline()
    return run_q(lm, cfg, root, q, *a, **k)
relation.run_q = held
sys.exit(main(sys.argv[1:]))
"""


def _relation_cli(out: Path, *extra: str, held: bool = False) -> subprocess.Popen:
    """``fv relation`` in its own process; with ``held`` each q stops once running until told on stdin."""
    from fv.paths import FIXTURES

    head = [sys.executable, "-c", HELD_RELATION] if held else [sys.executable, "-m", "fv"]
    return subprocess.Popen([*head, "relation", "--relation-csv", str(FIXTURES / "relation_tiny.csv"),
                             "--out", str(out), *REL_ARGS, "--quiet", *extra], stdin=subprocess.PIPE if held else None,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


def test_tasks_updating_the_summary_and_status_files_at_once_lose_no_update(tmp_path):
    from fv.pipelines.relation import SUMMARY, read_status, write_summary

    root, n = tmp_path / "rel", 30
    mine = {"A": [f"Q{i}" for i in range(0, 8, 2)], "B": [f"Q{i}" for i in range(1, 8, 2)]}
    qs = sorted(mine["A"] + mine["B"])
    write_summary("rel.csv", root, qs, [], {q: "pending" for q in qs})
    undone = _race(UPDATER, {t: [str(root), ",".join(m), str(n)] for t, m in mine.items()})
    assert undone == {"A": "0", "B": "0"}, f"updates of one process undone by the other: {undone}"
    summary = json.loads((root / SUMMARY).read_text())
    assert summary["status"] == {q: "completed" for q in qs}
    assert summary["best_layer"] == {q: n - 1 for q in qs}
    assert all(read_status(root, q)["best_layer"] == n - 1 for q in qs)
    # and the summary is exactly the merge of the status files: nothing lost on either side
    assert write_summary("rel.csv", root, qs, [], {q: read_status(root, q)["status"] for q in qs}) == summary


@pytest.mark.slow  # two fv processes on the tiny model: about 20 s on 2 CPUs
def test_two_fv_relation_on_one_folder_one_runs_the_other_refuses_naming_it(tmp_path):
    """Edit layer 8 for one, 9 for the other: every file of the folder shows whose it is."""
    out = tmp_path / "out"
    layer = {"A": "8", "B": "9"}
    procs = {t: _relation_cli(out, "--edit-layers", L) for t, L in layer.items()}
    results = {t: (p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for t, p in procs.items()}
    winners = [t for t, (rc, _, _) in results.items() if rc == 0]
    assert len(winners) == 1, results
    win, lose = winners[0], ({"A", "B"} - set(winners)).pop()
    root = out / "relation_tiny"
    assert_one_line_failure(results[lose][0], results[lose][2], f"output folder {root} is in use by pid {procs[win].pid}",
                            "`fv relation", "choose another --out")
    q1 = root / "Q1"
    assert json.loads((q1 / "qid_status.json").read_text())["inputs"]["edit_layers"] == layer[win]
    assert (q1 / f"layer_{layer[win]}").is_dir() and not (q1 / f"layer_{layer[lose]}").exists(), sorted(os.listdir(q1))
    assert json.loads((root / "relation_summary.json").read_text())["status"] == {"Q1": "completed"}
    assert read_holder(root) is None and read_holder(q1) is None


@pytest.mark.slow  # two fv processes on the tiny model: about 20 s on 2 CPUs
def test_a_killed_fv_relation_is_detected_and_its_q_resumed(tmp_path):
    from fv.paths import FIXTURES
    from fv.pipelines.relation import read_status

    out = tmp_path / "out"
    root = out / "relation_tiny"
    p = _relation_cli(out, "--edit-layers", "0-9", held=True)
    try:  # Q1 says when it has started and waits there: it is killed mid-run, whatever the machine's speed
        lines = [p.stdout.readline()]
        while lines[-1] and not lines[-1].startswith("held "):  # whatever fv printed before, up to Q1's word
            lines.append(p.stdout.readline())
        assert lines[-1].strip() == "held Q1", (lines, p.stderr.read() if p.poll() is not None else "")
        assert read_status(root, "Q1")["status"] == "running"
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    assert read_holder(root)["pid"] == p.pid and read_holder(root / "Q1")["pid"] == p.pid
    assert read_holder(root / "Q1")["command"] == "fv relation: q Q1"
    rc, stdout, err = run_cli(["relation", "--relation-csv", str(FIXTURES / "relation_tiny.csv"),
                               "--out", str(out), *REL_ARGS, "--edit-layers", "9"])
    assert rc == 0, err
    for folder in (root, root / "Q1"):
        assert f"took over the lock on {folder} left by pid {p.pid}" in err and "no longer running" in err, err
    assert "Q1: resumed" in err
    assert read_status(root, "Q1")["status"] == "completed" and "1 of 1 qs completed" in stdout


def test_fv_relation_refuses_to_take_over_a_q_a_live_process_runs(tmp_path):
    """A task of an earlier --no-wait array still running Q1: a new run on the folder refuses, naming it."""
    from fv.paths import FIXTURES

    out = tmp_path / "out"
    q1 = out / "relation_tiny" / "Q1"
    p = _writer(q1, "task")
    try:
        _wait_locked(p)
        rc, _, err = run_cli(["relation", "--relation-csv", str(FIXTURES / "relation_tiny.csv"), "--out", str(out), *REL_ARGS])
        assert_one_line_failure(rc, err, f"q Q1 of {q1.parent} is being run by pid {p.pid}", "`writer task`",
                                "fv relation status")
        assert read_holder(q1.parent) is None  # the refused run let its own lock go
    finally:
        p.kill()
        p.wait(timeout=30)


# Two pytest workers (or gate tasks) that computed one (model, trials): each writes the folder's four parity
# reports many times, and after each writes reads the two that carry its meta, under the folder's lock, to see
# whether they are one run's.
REPORTER = r"""
import json, sys
from pathlib import Path
from fv.lock import output_lock
from fv.parity.compare import ParityResult, StageResult
from fv.parity.report import write_parity_reports
from fv.parity.stages import STAGES
folder, tag, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
mixed = 0
for i in range(n):
    write_parity_reports(folder, ParityResult([StageResult(s, "PASS", 0, 0.0) for s in STAGES], {"writer": f"{tag}{i}"}), {}, {})
    with output_lock(folder, command=f"checker {tag}", wait_s=60):
        metas = {json.loads((folder / f).read_text())["meta"]["writer"] for f in ("parity_suite_report.json", "injection_parity_report.json")}
    mixed += len(metas) != 1
print(mixed)
"""


@pytest.mark.slow  # two processes importing torch: about 15 s on 2 busy CPUs
def test_two_writers_of_one_report_folder_take_turns_and_never_mix_it(tmp_path):
    folder = tmp_path / "reports"
    mixed = _race(REPORTER, {t: [str(folder), t, "15"] for t in ("A", "B")})
    assert mixed == {"A": "0", "B": "0"}, f"times each writer found the folder's reports from two runs: {mixed}"
    assert read_holder(folder) is None
