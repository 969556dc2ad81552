"""The worked adapter's documented command, run as its docstring writes it (docs/ports/my_fv_project_port.py).

A project root outside the checkout holds the adapter and a stand-in for sunsikham/my_fv_project's package ``fv``
(tests/support/standin_my_fv_project: their public signatures, written for this test, never their code, computing
what the reference computes). From that root the command of the adapter's docstring runs with fv's installed
``pytest`` (placeholders filled in, this suite's small-run options added), isolated and with ``--port-chain``; the
outcomes are read from the ``parity_suite_report.json`` it writes:

- isolated and chained: ``mean_activations``, ``indirect_effect``, ``top_heads``, ``fv`` and ``injection`` PASS
  (chained: each from the port's own upstream values, the indirect effects from its own mean activations);
  ``prompt`` and ``slot`` are not compared (the adapter does not port them); the session passes, the report says
  NOT COMPARED;
- a copy of the stand-in that puts a multi-token word's last token in its slot instead of the mean of its tokens:
  isolated, the FAIL lands at ``mean_activations``, in multi-token word slots only, and the later stages still PASS.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fv.paths import FIXTURES, REPO_ROOT

pytestmark = [pytest.mark.m2, pytest.mark.tiny]

ADAPTER = REPO_ROOT / "docs" / "ports" / "my_fv_project_port.py"
STANDIN = REPO_ROOT / "tests" / "support" / "standin_my_fv_project" / "fv"
PORTED = ["mean_activations", "indirect_effect", "top_heads", "fv", "injection"]
NOT_PORTED = ["prompt", "slot"]
# the deliberate mistake: a multi-token word's slot takes its last token instead of the mean of its tokens
RIGHT_SLOT = "acts[:, :, span].mean(dim=2) for span in slots"
WRONG_SLOT = "acts[:, :, span[-1]] for span in slots"


def documented_command() -> str:
    """The ``pytest ...`` command of the adapter's docstring, its continuation lines joined."""
    lines = ast.get_docstring(ast.parse(ADAPTER.read_text())).splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("pytest "))
    cmd = lines[start].strip()
    for line in lines[start + 1:]:
        if not cmd.endswith("\\"):
            break
        cmd = cmd[:-1].rstrip() + " " + line.strip()
    return re.sub(r"\s+", " ", cmd)


def project(root: Path, wrong: bool = False) -> Path:
    """``root`` as their project: the adapter beside the stand-in's ``fv/`` (its slot averaging broken when ``wrong``)."""
    shutil.copytree(STANDIN, root / "fv", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ADAPTER, root / ADAPTER.name)
    if wrong:
        mean = root / "fv" / "mean_activations.py"
        text = mean.read_text()
        assert text.count(RIGHT_SLOT) == 1, "the stand-in's multi-token averaging line moved: update RIGHT_SLOT"
        mean.write_text(text.replace(RIGHT_SLOT, WRONG_SLOT))
    return root


# measured: 50 s on 2 idle cores (131-148 s with a load average of ~4), the reference's stage values cached; most of
# it the port's indirect effects (per session 2 trials x 12 layers x (1 + 4 heads) forward passes, as their StepD runs)
@pytest.mark.slow(seconds=60)
def test_the_worked_adapters_command_gates_a_stand_in_project(tmp_path, fv_options):
    from fv.model.tiny import ensure_tiny_model

    src = fv_options.src_root or os.environ.get("FV_SRC_ROOT")
    if not src or not (Path(src) / "utils" / "extract_utils.py").is_file():
        pytest.skip("needs the live reference (--src-root or FV_SRC_ROOT naming function_vectors/src)")
    assert not tmp_path.resolve().is_relative_to(REPO_ROOT), "their project root must lie outside the checkout"
    cmd = documented_command()
    assert cmd.endswith(" [--port-chain]"), cmd
    model = str(ensure_tiny_model("tiny-llama"))  # a real folder path, as MODEL_PATH is
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT")}

    def session(root: Path, chained: bool = False) -> tuple[subprocess.CompletedProcess, dict, dict]:
        values = {"FV_CHECKOUT": str(REPO_ROOT), "MODEL_PATH": model, "SRC": str(src), "THEIR_PROJECT": str(root)}
        line = re.sub(r"\b(FV_CHECKOUT|MODEL_PATH|SRC|THEIR_PROJECT)\b", lambda m: values[m.group(1)], cmd)
        argv = shlex.split(line.replace(" [--port-chain]", " --port-chain" if chained else ""))
        assert argv[0] == "pytest" and not any(re.search(r"\b[A-Z][A-Z_]{2,}\b", a) for a in argv), argv
        out = root.parent / f"{root.name}_out"
        # fv's installed entry point (`python -m pytest` would put their root, and their fv, first on sys.path)
        argv[0] = str(Path(sys.executable).parent / "pytest")
        argv += ["-p", "no:cacheprovider", "-p", "no:xdist", "-q", "--dataset", str(FIXTURES / "antonym_tiny.json"),
                 "--max-trials", "2", "--edit-layer", "2", "--fv-out", str(out)]
        argv += ["--baukit-root", fv_options.baukit_root] if fv_options.baukit_root else []
        argv += ["--src-compat"] if fv_options.src_compat else []
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=root, env=env, timeout=900)
        reports = sorted(out.rglob("parity_suite_report.json"))
        assert len(reports) == 1, f"rc {proc.returncode}, no report under {out}:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
        report = json.loads(reports[0].read_text())
        return proc, report, {s["name"]: s for s in report["stages"]}

    def table(st: dict) -> dict:
        return {name: (s["status"], s["mismatch_count"], s["max_abs_diff"]) for name, s in st.items()}

    def not_compared(st: dict, stages: list) -> None:
        for name in stages:
            assert st[name]["status"] == "SKIP", table(st)
            assert st[name]["detail"] == [f"not compared: this side holds no {name}"], st[name]["detail"]

    good = project(tmp_path / "their_project")
    for chained in (False, True):
        proc, report, st = session(good, chained)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
        meta = report["meta"]
        assert (meta["port"], meta["port_object"]) == ("my_fv_project", "my_fv_project_port:MyFvProjectPort")
        assert Path(meta["port_root"]) == good.resolve() and meta["model_path"] == model, meta
        assert meta["port_mode"] == ("chained" if chained else "isolated")
        assert f"fv: the port my_fv_project (my_fv_project_port:MyFvProjectPort, root {good.resolve()}" in proc.stdout
        assert all(st[s]["status"] == "PASS" and st[s]["mismatch_count"] == 0 for s in PORTED), table(st)
        assert [s for s in st if s not in PORTED] == NOT_PORTED, table(st)
        not_compared(st, NOT_PORTED)
        assert report["status"] == "NOT COMPARED" and report["earliest_failed_stage"] is None, table(st)
        assert report["not_compared"].startswith(f"not compared: {len(NOT_PORTED)} of 7 stages ({', '.join(NOT_PORTED)})")

    proc, report, st = session(project(tmp_path / "their_project_wrong_slot", wrong=True))
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert report["status"] == "FAIL" and report["earliest_failed_stage"] == "mean_activations", table(st)
    mean = st["mean_activations"]
    assert mean["status"] == "FAIL" and mean["mismatch_count"] > 0, table(st)
    assert re.search(r": \d+ of the \d+ multi-token word slots and 0 others$", mean["pattern"]), mean["pattern"]
    assert all(st[s]["status"] == "PASS" for s in PORTED[1:]), table(st)  # isolated: each fed the reference's inputs
    not_compared(st, NOT_PORTED)
