"""The layouts a port's files can be read in, one reader module each, and how a folder finds its reader.

A port gated *by its files* (``--port-artifacts DIR``, ``fv port check --port-artifacts DIR``) is a folder a port
wrote. Each layout is a module with the same four names:

``NAME`` / ``DESCRIPTION``
    The layout's name (``--port-layout NAME``) and one line saying who writes it.
``looks_like(folder) -> bool``
    Whether ``folder`` is one run in this layout (files found by pattern, not by one run's names).
``fixed_trials(folder, tokenizer, relation_csv=None) -> dict``
    The trials the port ran, as an fv fixed-trials dict (``fv.runtime.trials``'s schema), so the other side runs on
    exactly those; ``FVError`` in one line when the folder does not say, naming the option that does.
``side(folder)``
    The folder as a side of a comparison (``fv.parity.sides``' protocol), holding the stages whose mapping onto fv's
    stage shapes is exact and naming the others, and why, in ``describe()["notes"]``.

The readers: ``fv.ports.my_fv_project_files`` (sunsikham/my_fv_project's relation q folder, ``<Q>/artifacts/``),
``fv.ports.my_fv_project_stepd`` (their fixed-trials StepD/StepE folder) and ``fv.ports.fv_layout`` (fv's own
``fv runtime run`` folder).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from fv.errors import FVError

READERS = ("fv.ports.my_fv_project_files", "fv.ports.my_fv_project_stepd", "fv.ports.fv_layout")


def readers() -> dict[str, ModuleType]:
    """The layout readers by name (a reader module that cannot be imported is left out)."""
    out = {}
    for name in READERS:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        out[mod.NAME] = mod
    return out


def names() -> list[str]:
    return sorted(readers())


def layout_of(folder: str | Path, name: str | None = None) -> ModuleType:
    """The reader of ``folder``: the one named (``--port-layout``), else the one layout the folder looks like.

    Raises ``FVError`` (one line) for an unknown name, a folder in no known layout, or one that two layouts claim."""
    folder = Path(folder)
    known = readers()
    if name:
        if name not in known:
            raise FVError(f"--port-layout {name}: no such layout; known: {', '.join(sorted(known))}")
        return known[name]
    if not folder.is_dir():
        raise FVError(f"--port-artifacts {folder}: no such folder")
    hits = [m for m in known.values() if m.looks_like(folder)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise FVError(f"--port-artifacts {folder}: no known layout found there (known: "
                      f"{'; '.join(f'{m.NAME}: {m.DESCRIPTION}' for m in known.values())}); point at one run's folder "
                      "or a root holding them, or name the layout with --port-layout")
    raise FVError(f"--port-artifacts {folder}: it looks like several layouts ({', '.join(m.NAME for m in hits)}); "
                  "name one with --port-layout")


def find_runs(root: str | Path, name: str | None = None) -> list[tuple[Path, ModuleType]]:
    """Every run folder at or under ``root`` with its reader: ``root`` itself when it is one run, else each folder
    below it in a known layout (a relation root's ``<relation>/<Q>/artifacts``), sorted by path. ``FVError`` when
    there is none."""
    root = Path(root)
    if not root.is_dir():
        raise FVError(f"--port-artifacts {root}: no such folder")
    known = readers()
    pick = [known[name]] if name and name in known else list(known.values())
    if name and name not in known:
        raise FVError(f"--port-layout {name}: no such layout; known: {', '.join(sorted(known))}")
    if any(m.looks_like(root) for m in pick):
        return [(root, layout_of(root, name))]
    runs = []
    for sub in sorted(p for p in root.rglob("*") if p.is_dir()):
        if any(sub.is_relative_to(r) for r, _m in runs):
            continue
        hits = [m for m in pick if m.looks_like(sub)]
        if len(hits) == 1:
            runs.append((sub, hits[0]))
        elif hits:
            raise FVError(f"--port-artifacts {sub}: it looks like several layouts ({', '.join(m.NAME for m in hits)}); "
                          "name one with --port-layout")
    if not runs:
        raise FVError(f"--port-artifacts {root}: no run folder in a known layout at or under it (known: "
                      f"{', '.join(sorted(known))})")
    return runs
