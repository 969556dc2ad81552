"""Every family of the reference through the session's door, in the default (own) mode, as a user runs the gate.

``tests/self/runtime/test_families.py`` calls the stages directly; the refusals a user meets happen before that, at the
door (``pytest_configure``: the family probe on a weightless copy, then the reference's own process loading the
model by the string the user typed and probing its indirect-effect hook). Here each case is a real session
(``pytest -m m2 --fv-model ...`` in a subprocess, as a user types it) against the live reference:

- GPT-2 as the hub id ``gpt2-xl`` (in an offline Hugging Face cache): the reference's loader matches that exact
  string, so every call of it, the door's probe included, must get the string, never the snapshot path;
- GPT-J, GPT-NeoX and a Pythia-named copy of it (their hooks call ``inputs.squeeze()``: a one-token probe fails
  where every real prompt runs), Llama, Gemma, OLMo;
- a fork whose ``compute_function_vector`` indexes the slot dimension its own way (wrong, but it runs on real
  trials): the door lets it in and the gate FAILs at the FV stage, naming it;
- a fork whose loader matches an exact hub id (``gpt2``) and whose hooks look for ``gpt2``.

Each session ends with M2's parity reports; every stage must be bit-exact (or FAIL where the fork is wrong).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fv.model.tiny import ensure_tiny_model
from fv.paths import FIXTURES, REPO_ROOT
from tests.support.forks import build_fork
from tests.support.hf_cache import build_hf_cache

pytestmark = [pytest.mark.m2, pytest.mark.tiny, pytest.mark.slow]

EDIT_LAYER, MAX_TRIALS = 3, 3  # the family models have 6 layers; three trials keep each session short


def run_session(src: Path, out: Path, models: list[str], fv_options, env: dict | None = None) -> tuple[int, str]:
    """``pytest -m m2 --fv-model <models>`` against ``src`` in the default (own) mode, in a fresh process started
    from ``out``, with the src-values cache off (the live reference computes every value). Returns (exit code,
    output, whole; ``tail`` shortens it for a failure message)."""
    cmd = [sys.executable, "-m", "pytest", str(REPO_ROOT / "tests"), "-m", "m2", "-p", "no:cacheprovider", "-p", "no:xdist",
           "-q", "--fv-model", ",".join(models), "--dataset", str(FIXTURES / "antonym_tiny.json"),
           "--edit-layer", str(EDIT_LAYER), "--max-trials", str(MAX_TRIALS), "--src-root", str(src), "--require-src",
           "--src-compat", "--no-src-cache", "--fv-out", str(out / "results"), "--fv-device", fv_options.device]
    if fv_options.baukit_root:
        cmd += ["--baukit-root", fv_options.baukit_root]
    full = {k: v for k, v in os.environ.items() if k not in ("FV_SRC_ROOT", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT")}
    full.update(env or {})
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=out, env=full, timeout=1500)
    return proc.returncode, proc.stdout + proc.stderr  # whole: a warning early on stderr is searched for


def tail(output: str) -> str:
    """The end of a session's output, for a failure message."""
    return output[-6000:]


def reports(out: Path) -> dict[str, dict]:
    """The M2 parity reports a session wrote, by the model name its meta records."""
    found = {}
    for f in sorted((out / "results").rglob("parity_suite_report.json")):
        r = json.loads(f.read_text())
        found[r["meta"]["model_name"]] = r
    return found


def assert_bit_exact_own(report: dict, name: str, output: str) -> None:
    assert report["status"] == "PASS", f"{name}: {report['status']} at {report['earliest_failed_stage']}\n{tail(output)}"
    meta = report["meta"]
    assert meta["src_model_mode"] == "own", meta["src_model_mode"]
    assert meta["tolerance"]["name"] == "exact", meta["tolerance"]
    for st in report["stages"]:
        assert st["status"] == "PASS" and st["mismatch_count"] == 0, (name, st["name"], st["status"])
        if st.get("max_abs_diff") is not None:
            assert st["max_abs_diff"] == 0.0, (name, st["name"], st["max_abs_diff"])


@pytest.fixture
def hub_cache(tmp_path) -> Path:
    return tmp_path / "hf" / "hub"


def hub_env(cache: Path) -> dict:
    return {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.mark.slow(seconds=120)
def test_every_reference_family_passes_the_door_in_own_mode(reference, fv_options, tmp_path, hub_cache):
    """GPT-2 as ``gpt2-xl`` (a hub id in the cache), GPT-J, GPT-NeoX, a Pythia-named GPT-NeoX, Llama, Gemma and OLMo:
    none refused at the door, each M2 bit-exact against the reference loading its own copy by the string typed."""
    build_hf_cache(hub_cache, "gpt2-xl", ensure_tiny_model("tiny-gpt2"))
    pythia = tmp_path / "models" / "tiny-pythia-shaped"  # the same weights under a Pythia name: its own branches
    shutil.copytree(ensure_tiny_model("tiny-gpt-neox"), pythia)
    assert "neox" not in pythia.name and "pythia" in pythia.name
    models = ["gpt2-xl", "tiny-gpt-j", "tiny-gpt-neox", str(pythia), "tiny-llama", "tiny-gemma", "tiny-olmo"]
    rc, output = run_session(reference.src_root, tmp_path / "run", models, fv_options, hub_env(hub_cache))
    assert "cannot run" not in output, tail(output)
    assert rc == 0, tail(output)
    got = reports(tmp_path / "run")
    want = {"gpt2-xl", "tiny-gpt-j", "tiny-gpt-neox", pythia.name, "tiny-llama", "tiny-gemma", "tiny-olmo"}
    missing = want - {Path(k).name for k in got}
    assert not missing, f"no M2 report for {sorted(missing)}; reports for {sorted(got)}\n{tail(output)}"
    for name, report in got.items():
        assert_bit_exact_own(report, name, output)
    gpt2 = got["gpt2-xl"]["meta"]  # the typed hub id, resolved by fv to the cache's snapshot for its own copy
    assert "models--gpt2-xl" in gpt2["model_path"] and "snapshots" in gpt2["model_path"], gpt2["model_path"]


# a fork whose FV takes each top head's mean activation at the second-to-last slot (T - 1 with T = -1): it runs on
# every real trial, and its FV differs from upstream's
SLOT_FORK_CHANGES = [("utils/extract_utils.py", r"= mean_activations\[L,H,T\]", "= mean_activations[L,H,T-1]", 1)]

# a fork whose loader takes the exact hub id 'gpt2' (GPT-2 small's) as its GPT-2 branch, and whose hooks look for 'gpt2'
GPT2_FORK_CHANGES = [
    ("utils/model_utils.py", r"if model_name == 'gpt2-xl':", "if model_name in ('gpt2-xl', 'gpt2'):", 1),
    ("utils/intervention_utils.py", r"'gpt2-xl' in model_config\['name_or_path'\]", "'gpt2' in model_config['name_or_path']", 1),
    ("utils/extract_utils.py", r"'gpt2-xl' in model_config\['name_or_path'\]", "'gpt2' in model_config['name_or_path']", 1),
]


@pytest.mark.slow(seconds=20)
def test_a_fork_that_indexes_slots_its_own_way_fails_at_the_fv_stage(reference, fv_options, tmp_path):
    """Upstream's door probe fed ``compute_function_vector`` one slot, so this fork was refused ("index -2 is out of
    bounds for dimension 2 with size 1"); probed with the session's shapes it runs, and the gate reaches its FAIL at
    the FV stage, every stage before it bit-exact."""
    src = build_fork(reference.src_root, tmp_path / "slot-fork", SLOT_FORK_CHANGES)
    rc, output = run_session(src, tmp_path / "run", ["tiny-llama"], fv_options)
    assert "cannot run" not in output and "IndexError" not in output, tail(output)
    assert rc == 1, tail(output)
    report = reports(tmp_path / "run")["tiny-llama"]
    assert report["status"] == "FAIL" and report["earliest_failed_stage"] == "fv", (report["earliest_failed_stage"], tail(output))
    stages = {s["name"]: s for s in report["stages"]}
    order = [s["name"] for s in report["stages"]]
    for name in order[:order.index("fv")]:
        assert stages[name]["status"] == "PASS" and stages[name]["mismatch_count"] == 0, (name, stages[name]["status"])
    assert stages["fv"]["mismatch_count"] > 0


@pytest.mark.slow(seconds=25)
def test_a_fork_whose_loader_matches_an_exact_hub_id(reference, fv_options, tmp_path, hub_cache):
    """A fork whose GPT-2 branch is ``model_name in ('gpt2-xl', 'gpt2')``, gated on the hub id ``gpt2``: the string
    reaches its loader (the door's probe included) and every stage is bit-exact; upstream, which has no branch for
    ``gpt2``, is refused in one line naming that string."""
    build_hf_cache(hub_cache, "gpt2", ensure_tiny_model("tiny-gpt2"))
    src = build_fork(reference.src_root, tmp_path / "gpt2-fork", GPT2_FORK_CHANGES)
    rc, output = run_session(src, tmp_path / "run", ["gpt2"], fv_options, hub_env(hub_cache))
    assert rc == 0, tail(output)
    assert_bit_exact_own(reports(tmp_path / "run")["gpt2"], "gpt2", output)
    rc, output = run_session(reference.src_root, tmp_path / "upstream", ["gpt2"], fv_options, hub_env(hub_cache))
    assert rc == 4, tail(output)
    refusal = [line for line in output.splitlines() if "cannot run gpt2" in line]
    assert len(refusal) == 1 and "'gpt2'" in refusal[0] and "snapshots" not in refusal[0], tail(output)


# a fork that checks each head's FV contribution is finite (``.item()``): on real weights it runs; on the door's
# weightless (meta-device) stand-in ``.item()`` cannot run, so the probe fails where no real trial would
FINITE_FORK_CHANGES = [("utils/extract_utils.py", r"\n(\s*)function_vector \+= d_out",
                        r"\n\1assert bool(torch.isfinite(d_out).all().item()), 'a head contribution is not finite'\n\1function_vector += d_out", 1)]


@pytest.mark.slow(seconds=20)
def test_a_probe_failure_on_the_stand_in_is_a_warning_not_a_refusal(reference, fv_options, tmp_path):
    """The family probe runs the reference's functions on a weightless copy of the model; a fork whose FV code
    calls ``.item()`` fails there and nowhere else. The door says so as a warning and the gate runs: every stage
    bit-exact."""
    src = build_fork(reference.src_root, tmp_path / "finite-fork", FINITE_FORK_CHANGES)
    rc, output = run_session(src, tmp_path / "run", ["tiny-llama"], fv_options)
    assert rc == 0, tail(output)
    warning = [line for line in output.splitlines() if "fv: warning: preflight reference family" in line]
    assert len(warning) == 1 and "compute_function_vector" in warning[0] and "Not a refusal" in warning[0], tail(output)
    assert_bit_exact_own(reports(tmp_path / "run")["tiny-llama"], "tiny-llama", output)
