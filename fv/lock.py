"""One writer per output folder: a ``filelock`` lock plus a small JSON record of who holds it.

Two ``fv runtime run`` (or ``fv reference``, ``fv relation``, ``fv gate m7``) writing into one folder would interleave
their artifacts: a mean-activation file from one run beside the indirect effects of the other, each with a meta
that looks right. So a writer takes the folder's lock first, and a second writer **refuses at once**, in one
line that names the holder (pid, host, command, since when) — waiting would only hide that two jobs were
pointed at one folder. Writers whose turn is seconds away by design (parity reports of one (model, trials)
written by two pytest workers) pass ``wait_s`` and wait that long before refusing.

Files that several legitimate writers share (a relation run's summary and ``qid_status.json`` files, updated by
every array task of the run) are not owned by anyone: each update is a short read-modify-write under
:func:`state_lock`, so concurrent updates never lose one another.

The lock itself is ``filelock``'s (an OS lock on ``.fv.lock``, released by the kernel when its process dies,
however it dies). Beside it, ``.fv.lock.json`` records the holder; it is written after the lock is taken and
removed on release. A record found when the lock is free is therefore stale: its process was killed before
it could clean up. It is taken over with a one-line note naming the dead holder; and a record whose pid is
alive on this host while the lock is free is reported too, since that process no longer holds the folder.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock, Timeout

from fv.errors import FVError

LOCK_NAME = ".fv.lock"
HELP = ("One writer per output folder: a second `fv runtime run`, `fv reference run` or `fv relation run` on the same --out refuses at once, in one line "
        "naming the holder (pid, host, command); a lock left by a killed process is taken over with a one-line note.")
HOLDER_NAME = ".fv.lock.json"
STATE_LOCK_NAME = ".fv.state.lock"
# a state update holds the lock for milliseconds; a minute of waiting means a stuck filesystem, not a busy one
STATE_WAIT_S = 60.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except (OSError, OverflowError):
        return False
    return True


def read_holder(folder: str | Path) -> dict | None:
    """The holder record of ``folder``'s lock, or None when there is none or it is unreadable."""
    try:
        rec = json.loads((Path(folder) / HOLDER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def describe_holder(rec: dict | None) -> str:
    """``pid 123 on host h (`fv runtime run --out x`, since 2026-01-01T00:00:00Z)``, or a note that none is recorded yet."""
    if not rec:
        return "a process that has not yet recorded itself"
    return f"pid {rec.get('pid')} on host {rec.get('host')} (`{rec.get('command')}`, since {rec.get('since')})"


def _is_stale(rec: dict) -> bool:
    return rec.get("host") == socket.gethostname() and not _pid_alive(int(rec.get("pid") or 0))


@contextmanager
def output_lock(folder: str | Path, command: str | None = None, note: Callable[[str], None] | None = None,
                wait_s: float = 0.0) -> Iterator[Path]:
    """Hold ``folder``'s writer lock for the body; refuse in one FVError line if another process holds it
    (after waiting ``wait_s`` seconds for it, when given).

    ``command`` is recorded for whoever is refused (default: this process's argv). ``note`` receives the one
    line said when a stale lock left by a killed process is taken over (default: stderr).
    """
    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FVError(f"cannot create output folder {folder}: {exc.strerror}. Choose a writable --out path.") from None
    say = note or (lambda s: print(s, file=sys.stderr))
    lock = FileLock(str(folder / LOCK_NAME), timeout=wait_s)
    try:
        lock.acquire()
    except Timeout:
        holder = _wait_for_holder(folder)
        waited = f" after waiting {wait_s:g} s" if wait_s > 0 else ""
        raise FVError(f"output folder {folder} is in use by {describe_holder(holder)}; this command refuses "
                      f"to write beside it{waited}. Wait for it to finish, or choose another --out.") from None
    except OSError as exc:
        raise FVError(f"cannot lock output folder {folder}: {exc.strerror}. Choose a writable --out path.") from None
    try:
        old = read_holder(folder)
        if old is not None:
            why = "which is no longer running" if _is_stale(old) else "which no longer holds the lock"
            say(f"note: took over the lock on {folder} left by {describe_holder(old)}, {why}.")
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command or " ".join(["fv", *sys.argv[1:]]),
                  "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp = folder / f"{HOLDER_NAME}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        os.replace(tmp, folder / HOLDER_NAME)
        yield folder
    finally:
        try:
            (folder / HOLDER_NAME).unlink()
        except FileNotFoundError:
            pass
        lock.release()
        if created:
            _remove_if_only_lock(folder)


def held_by(folder: str | Path) -> str | None:
    """Who holds ``folder``'s writer lock now (as :func:`describe_holder` says it), or None when it is free or
    the folder does not exist. For a process that must not start beside a live holder of a folder it does not
    itself lock (a relation run checking its q folders)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    lock = FileLock(str(folder / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return describe_holder(_wait_for_holder(folder))
    except OSError:
        return None
    lock.release()
    return None


@contextmanager
def state_lock(folder: str | Path) -> Iterator[None]:
    """Hold ``folder``'s state lock for a short read-modify-write of files several processes update.

    Unlike :func:`output_lock` it waits (up to ``STATE_WAIT_S``) instead of refusing, records no holder, and
    is re-entrant within a thread (one ``filelock`` instance per path), so a helper that updates two shared
    files may call another that takes it too.
    """
    path = Path(folder).resolve() / STATE_LOCK_NAME
    lock = FileLock(str(path), timeout=STATE_WAIT_S, is_singleton=True)
    try:
        lock.acquire()
    except Timeout:
        raise FVError(f"could not update the shared files of {folder} within {STATE_WAIT_S:g} s: its {STATE_LOCK_NAME} "
                      f"stays held by another process. Check that the filesystem supports locks, or stop the stuck process.") from None
    except OSError as exc:
        raise FVError(f"cannot lock {path}: {exc.strerror}. Choose a writable --out path.") from None
    try:
        yield
    finally:
        lock.release()


def _wait_for_holder(folder: Path, seconds: float = 3.0) -> dict | None:
    """The holder's record; a holder that took the lock a moment ago may not have written it yet, so wait a
    little for it rather than refuse without naming who holds the folder."""
    deadline = time.monotonic() + seconds
    rec = read_holder(folder)
    while rec is None and time.monotonic() < deadline:
        time.sleep(0.05)
        rec = read_holder(folder)
    return rec


def _remove_if_only_lock(folder: Path) -> None:
    """A folder this lock created and nothing else wrote to goes again: a command that failed writes nothing."""
    try:
        if {p.name for p in folder.iterdir()} <= {LOCK_NAME}:
            (folder / LOCK_NAME).unlink(missing_ok=True)
            folder.rmdir()
    except OSError:
        pass
