"""A port by its functions (``fv.ports.functions``): a runtime loaded by ``MODULE:OBJECT`` from a project root, in a
process of its own, gated stage by stage against the live reference.

- fv's own runtime through the port protocol (``fv.ports.fv_runtime``): every stage bit-exact, isolated and chained;
- a deliberately wrong port per stage (a wrong slot, a head split off by one, the FV at half strength, a target
  token off by one): isolated, that stage FAILs and every other stage PASSes; chained, the first divergence is it;
- a port without a stage: that stage is not compared (SKIP, named), never a PASS;
- a port package named ``fv`` in its own project root loads, runs, and never shadows this fv (nor this fv it).
"""

from __future__ import annotations

import textwrap

import pytest

from fv.parity.registry import STAGES
from fv.parity.run import run_parity
from fv.parity.stages import Params
from fv.paths import FIXTURES, REPO_ROOT
from fv.ports.functions import port_side

pytestmark = [pytest.mark.m2, pytest.mark.tiny]
PARAMS = Params(n_top_heads=3, edit_layer=2, max_trials=3)


@pytest.fixture(scope="module")
def lm():
    from fv.model.loading import load_model

    return load_model("tiny-llama", "cpu", "float32")


@pytest.fixture(scope="module")
def trials(lm, tmp_path_factory):
    from fv.runtime.trials import load_trials, make_icl_trials, save_trials

    path = tmp_path_factory.mktemp("port_trials") / "fixed_trials_antonym_tiny_port.json"
    save_trials(path, make_icl_trials(FIXTURES / "antonym_tiny.json", lm.tokenizer, 3, 5, 0, model_name_for_tokenizer=lm.name,
                                      model_prepend_bos=lm.prepend_bos, prepend_bos_token_used=not lm.prepend_bos,
                                      dataset_json_label="antonym_tiny.json"))
    return load_trials(path)


@pytest.fixture(scope="module")
def source(reference, lm, fv_options):
    """The live reference on fv's model object (shared mode): the other side, computed once (src-values cache)."""
    from fv.pytest_plugin import cached_source
    from fv.reference.stages import live_source

    return cached_source(fv_options, live_source(reference))


@pytest.fixture(scope="module")
def processes():
    """One port process per port object, shared by its isolated and chained gates (each loads its model once)."""
    started: dict = {}
    yield started
    for proc in started.values():
        proc.close()


def _gate(lm, trials, source, processes, spec: str, isolated: bool = True):
    from fv.ports.functions import PortProcess, PortSide

    if spec not in processes:
        processes[spec] = PortProcess(spec, REPO_ROOT)
    side = PortSide(processes[spec], "tiny-llama", isolated=isolated)
    run = run_parity(lm, trials, PARAMS, source, None, other=None, ours=side)
    return run, {s.name: s for s in run.result.stages}


@pytest.mark.parametrize("isolated", [True, False], ids=["isolated", "chained"])
def test_fv_runtime_as_a_port_is_bit_exact(lm, trials, source, processes, isolated):
    run, st = _gate(lm, trials, source, processes, "fv.ports.fv_runtime:FvRuntimePort", isolated)
    assert run.tolerance.name == "exact"
    assert [s for s in STAGES if st[s].status != "PASS"] == [], {s: (st[s].status, st[s].detail[:2]) for s in STAGES}
    assert all(st[s].mismatch_count == 0 and st[s].max_abs_diff == 0.0 for s in STAGES)
    meta = run.result.meta
    assert meta["port"] == "fv-runtime" and meta["port_mode"] == ("isolated" if isolated else "chained")
    assert meta["our_side"].startswith("the port fv-runtime")


WRONG = [("WrongSlot", "mean_activations"), ("HeadOffByOne", "indirect_effect"), ("HalfFV", "fv"),
         ("TargetOffByOne", "injection")]


@pytest.mark.parametrize("port,stage", WRONG, ids=[w[0] for w in WRONG])
def test_a_wrong_stage_fails_alone_when_isolated(lm, trials, source, processes, port, stage):
    run, st = _gate(lm, trials, source, processes, f"tests.support.wrong_ports:{port}")
    assert st[stage].status == "FAIL" and st[stage].mismatch_count > 0, st[stage].summary()
    others = {s: st[s].status for s in STAGES if s != stage}
    assert set(others.values()) == {"PASS"}, others
    assert run.result.earliest_failed_stage == stage


@pytest.mark.parametrize("port,stage", WRONG, ids=[w[0] for w in WRONG])
def test_a_wrong_stage_is_the_first_divergence_when_chained(lm, trials, source, processes, port, stage):
    run, st = _gate(lm, trials, source, processes, f"tests.support.wrong_ports:{port}", isolated=False)
    assert run.result.earliest_failed_stage == stage
    assert all(st[s].status == "PASS" for s in STAGES[: STAGES.index(stage)])
    first = run.result.first_divergence()
    assert first["stage"] == stage


def test_a_stage_the_port_lacks_is_not_compared(lm, trials, source, processes):
    run, st = _gate(lm, trials, source, processes, "tests.support.wrong_ports:NoEffects")
    assert st["indirect_effect"].status == "SKIP" and "holds no indirect_effect" in st["indirect_effect"].detail[0]
    assert st["top_heads"].status == "PASS"  # isolated: ranked from the reference's effects
    assert any("no indirect_effect() method" in n for n in run.result.meta["our_notes"])
    # every compared stage passed, and still no PASS: the gate says what it did not compare
    assert run.result.status == "NOT COMPARED" and run.result.lacked_by_ours == ["indirect_effect"]
    assert run.result.not_compared_line.startswith("not compared: 1 of 7 stages (indirect_effect)")


def test_a_users_package_named_fv_is_theirs_in_the_ports_process(lm, trials, source, tmp_path):
    """Their project root holds a package ``fv`` (as sunsikham/my_fv_project's does); the port process imports theirs,
    this process keeps this fv; its prompt stage (their tokenizer call) is compared like any other."""
    import fv as this_fv
    from fv.model.tiny import ensure_tiny_model

    pkg = tmp_path / "their_project" / "fv"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("OURS = 'their fv'\n")
    (pkg / "port.py").write_text(textwrap.dedent('''
        import fv
        from transformers import AutoTokenizer


        class Port:
            name = "their-fv"

            def load(self, model, device, dtype):
                assert fv.OURS == "their fv"
                self.tok = AutoTokenizer.from_pretrained(model)
                return {"dtype": "float32", "package": fv.__file__}

            def prompt(self, trials, keys, params):
                out = {}
                for key, t in zip(keys, trials["trials"]):
                    out[key] = {"clean_prompt_str": t["clean_prompt_str"], "corrupted_prompt_str": t["corrupted_prompt_str"],
                                "clean_input_ids": self.tok(t["clean_prompt_str"])["input_ids"],
                                "corrupted_input_ids": self.tok(t["corrupted_prompt_str"])["input_ids"],
                                "target_str": t["target_str"], "answer_ids": list(t["answer_ids"])}
                return out
    '''))
    side = port_side("fv.port:Port", pkg.parent, str(ensure_tiny_model("tiny-llama")))
    try:
        assert side.process.hello["package_file"] == str(pkg / "__init__.py")
        run = run_parity(lm, trials, PARAMS, source, None, ours=side)
    finally:
        side.process.close()
    st = {s.name: s for s in run.result.stages}
    assert st["prompt"].status == "PASS", st["prompt"].summary()
    assert {st[s].status for s in STAGES if s != "prompt"} == {"SKIP"}
    assert run.result.status == "NOT COMPARED"  # six stages the port does not have: never a PASS
    assert run.result.meta["port_package_file"] == str(pkg / "__init__.py")
    assert this_fv.__file__ == str(REPO_ROOT / "fv" / "__init__.py")


def test_a_port_that_cannot_load_is_refused_in_one_line(tmp_path):
    import re
    from pathlib import Path

    from fv.errors import FVError

    with pytest.raises(FVError, match=r"^port nowhere:Port: cannot load port nowhere:Port from .*ModuleNotFoundError") as exc:
        port_side("nowhere:Port", tmp_path, "tiny-llama")
    log = re.search(r"\(log (\S+)\)$", str(exc.value)).group(1)
    assert "No module named 'nowhere'" in Path(log).read_text()  # the failing port's log is kept for its user
    Path(log).unlink()


def test_pytest_m2_gates_a_port_named_on_the_command_line(tmp_path, fv_options):
    """``pytest -m m2 --port MODULE:OBJECT --port-root DIR`` as a user types it: the stage gates compare the port
    (isolated) with the live reference; a wrong port fails at its stage, and the table names the port as a side."""
    import json
    import os
    import subprocess
    import sys

    if not fv_options.src_root and not os.environ.get("FV_SRC_ROOT"):
        pytest.skip("needs the live reference (--src-root or FV_SRC_ROOT)")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT")}

    def session(port: str, out):
        cmd = [sys.executable, "-m", "pytest", str(REPO_ROOT / "tests" / "parity" / "test_m2_stage_parity.py"), "-m", "m2",
               "-p", "no:cacheprovider", "-p", "no:xdist", "-q", "--fv-model", "tiny-llama", "--dataset",
               str(FIXTURES / "antonym_tiny.json"), "--max-trials", "2", "--edit-layer", "2", "--src-model", "shared",
               "--port", port, "--port-root", str(REPO_ROOT), "--port-exact", "--fv-out", str(out)]
        if fv_options.src_root:
            cmd += ["--src-root", str(fv_options.src_root)]
        if fv_options.baukit_root:
            cmd += ["--baukit-root", fv_options.baukit_root]
        cmd += ["--src-compat"] if fv_options.src_compat else []
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
        reports = sorted(out.rglob("parity_suite_report.json"))
        return proc, json.loads(reports[0].read_text()) if reports else None

    proc, report = session("fv.ports.fv_runtime:FvRuntimePort", tmp_path / "good")
    assert proc.returncode == 0 and report["status"] == "PASS", proc.stdout[-3000:]
    assert report["meta"]["port_mode"] == "isolated" and "fv: the port fv-runtime" in proc.stdout
    assert report["meta"]["tolerance"]["name"] == "exact"  # --port-exact: fv's runtime is held to the bit
    proc, report = session("tests.support.wrong_ports:HalfFV", tmp_path / "bad")
    assert proc.returncode == 1 and report["earliest_failed_stage"] == "fv", proc.stdout[-3000:]
