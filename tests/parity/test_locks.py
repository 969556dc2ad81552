"""Issue 15, concurrent runs: one writer per output folder. Two real processes started on one folder at once: one
writes all its files, the other refuses in one line naming the holder, and no file of the folder is from the
loser. A lock left by a killed process is detected and taken over with a note. ``fv run`` takes the same lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fv
from fv.errors import FVError
from fv.lock import HOLDER_NAME, LOCK_NAME, output_lock, read_holder
from tests.parity.test_input_validation import RUN_ARGS, assert_one_line_failure, base_trials, run_cli

N_FILES = 8
# A minimal writer: waits for the go file (so both processes reach the lock together), takes the folder's lock,
# then writes N files slowly, each naming the writer.
WRITER = r"""
import os, sys, time
from pathlib import Path
from fv.errors import FVError
from fv.io import write_text
from fv.lock import output_lock
folder, tag, n, go, hold = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), float(sys.argv[5])
while not go.exists():
    time.sleep(0.01)
try:
    with output_lock(folder, command=f"writer {tag}"):
        print("locked", flush=True)
        for i in range(n):
            write_text(folder / f"part{i}.txt", f"{tag} {os.getpid()} {i}\n")
            time.sleep(0.05)
        time.sleep(hold)
except FVError as exc:
    print(f"writer {tag}: error: {exc}", file=sys.stderr)
    sys.exit(2)
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(Path(fv.__file__).resolve().parent.parent)}


def _writer(folder: Path, tag: str, go: Path, hold: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(folder), tag, str(N_FILES), str(go), str(hold)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


def _wait_locked(p: subprocess.Popen) -> None:
    line = p.stdout.readline()
    assert line.strip() == "locked", (line, p.stderr.read() if p.poll() is not None else "")


def _written_by(folder: Path) -> set[str]:
    return {(folder / f"part{i}.txt").read_text().split()[0] for i in range(N_FILES)}


def test_two_writers_at_once_one_writes_everything_the_other_refuses_naming_it(tmp_path):
    folder, go = tmp_path / "out", tmp_path / "go"
    procs = {tag: _writer(folder, tag, go) for tag in ("A", "B")}
    time.sleep(0.5)
    go.touch()
    results = {tag: (p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for tag, p in procs.items()}
    winners = [t for t, (rc, _, _) in results.items() if rc == 0]
    assert len(winners) == 1, results
    win, lose = winners[0], ({"A", "B"} - set(winners)).pop()
    rc, _, err = results[lose]
    line = assert_one_line_failure(rc, err, "is in use by", f"pid {procs[win].pid}", f"`writer {win}`", "host")
    assert "choose another --out" in line
    assert _written_by(folder) == {win}, "files of the refused writer reached the folder"
    assert not (folder / HOLDER_NAME).exists()
    # once the first is done, the second goes through and replaces every file: nothing lost, nothing mixed
    again = _writer(folder, lose, go)
    assert again.wait(timeout=120) == 0, again.stderr.read()
    assert _written_by(folder) == {lose}


def test_a_killed_writers_lock_is_detected_and_taken_over(tmp_path):
    folder, go = tmp_path / "out", tmp_path / "go"
    go.touch()
    p = _writer(folder, "K", go, hold=60)
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


def test_fv_run_refuses_a_held_folder_before_the_model_loads(tmp_path):
    folder, go = tmp_path / "out", tmp_path / "go"
    go.touch()
    trials = tmp_path / "t.json"
    trials.write_text(json.dumps(base_trials("icl")))
    p = _writer(folder, "H", go, hold=60)
    try:
        _wait_locked(p)
        t0 = time.monotonic()
        rc, _, err = run_cli(["run", "--fixed-trials", str(trials), "--out", str(folder), *RUN_ARGS])
        assert_one_line_failure(rc, err, f"output folder {folder} is in use by pid {p.pid}", "`writer H`")
        theirs = {LOCK_NAME, HOLDER_NAME} | {f"part{i}.txt" for i in range(N_FILES)}
        assert {x.name for x in folder.iterdir()} <= theirs  # the refused run wrote nothing there
        assert time.monotonic() - t0 < 30
    finally:
        p.kill()
        p.wait(timeout=30)


def test_a_failed_command_leaves_no_lock_in_a_folder_it_created(tmp_path):
    folder = tmp_path / "new"
    with pytest.raises(RuntimeError):
        with output_lock(folder):
            raise RuntimeError("stage failed")
    assert not folder.exists()
