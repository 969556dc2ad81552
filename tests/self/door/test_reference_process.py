"""The reference as its users run it: in a process of its own, handed the name they typed, a fork loading 4-bit
through the project's own ``fv`` package, a Llama folder named as Meta names it, upstream's ``70b`` rule.

Every fork is built at run time from the reference in use, in a temporary folder (nothing of it is committed).
The 4-bit cases need bitsandbytes>=0.50 and accelerate (``fv[quant]``) and skip without them (bitsandbytes 0.42,
the user's pinned CUDA build, has no NF4 on the CPU).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fv import compat
from fv.model.tiny import ensure_tiny_model
from fv.paths import REPO_ROOT
from tests.support.hf_cache import build_hf_cache
from tests.support.reference_gate import assert_bit_exact, gate

pytestmark = [pytest.mark.m2, pytest.mark.tiny, pytest.mark.slow]


# 4-bit NF4 on the CPU (these tests load on "cpu"): bitsandbytes>=0.50 and accelerate, read from their metadata
# (importing bitsandbytes compiles kernels: seconds at every collection). Older bitsandbytes (0.42, the user's pinned
# CUDA build) runs 4-bit on CUDA only: one reason, counted as skipped (fv.compat.cpu_4bit)
needs_quant = pytest.mark.skipif(not compat.cpu_4bit()[0], reason=compat.cpu_4bit()[1])


def bf16_llama(dest: Path) -> Path:
    """The tiny Llama stored in bfloat16 (as real Llama checkpoints are) in ``dest``; its name chooses the rule."""
    from transformers import AutoModelForCausalLM

    src = ensure_tiny_model("tiny-llama")
    if not (dest / "config.json").is_file():
        AutoModelForCausalLM.from_pretrained(str(src), **compat.dtype_kwargs(torch.bfloat16)).save_pretrained(str(dest))
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(src / f, dest / f)
    return dest


# the real user's fork: Llama names with 8b or 70b load in 4-bit through their project's own `fv` package
QUANT_FORK_CHANGES = [
    ("utils/model_utils.py", r"if '70b' in model_name\.lower\(\):", "if '70b' in model_name.lower() or '8b' in model_name.lower():", 1),
    ("utils/model_utils.py", r"from transformers import BitsAndBytesConfig\n(\s*)bnb_config = BitsAndBytesConfig\([^)]*\)",
     r"from fv.quant_config import make_bnb4_config\n\1bnb_config = make_bnb4_config()", 1),
    ("utils/model_utils.py", r"tokenizer = LlamaTokenizer\.from_pretrained\(model_name\)", "tokenizer = AutoTokenizer.from_pretrained(model_name)", 1),
    ("utils/model_utils.py", r"model = LlamaForCausalLM\.from_pretrained\(\s*model_name,\s*trust_remote_code=True,\s*quantization_config=bnb_config\s*\)",
     "model = LlamaForCausalLM.from_pretrained(model_name, quantization_config=bnb_config)", 1),
    ("utils/intervention_utils.py", r"if '70b' in model_config\['name_or_path'\]:",
     "if '70b' in model_config['name_or_path'] or '8b' in model_config['name_or_path']:", 1),
]
USER_FV = {
    "__init__.py": '"""The user\'s own runtime package (a stand-in): named fv, like this one."""\nUSERS_OWN_FV = True\n',
    "quant_config.py": ("import torch\nfrom transformers import BitsAndBytesConfig\n\n\ndef make_bnb4_config():\n"
                        "    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4', bnb_4bit_use_double_quant=True,\n"
                        "                              bnb_4bit_compute_dtype=torch.float16)\n"),
}


def build_quant_fork(upstream: Path, project: Path) -> Path:
    """``project/src`` (upstream with QUANT_FORK_CHANGES) beside ``project/fv`` (the user's own package)."""
    from tests.support.forks import build_fork

    src = build_fork(upstream, project, QUANT_FORK_CHANGES)
    (project / "fv").mkdir()
    for name, text in USER_FV.items():
        (project / "fv" / name).write_text(text)
    return src


def test_own_mode_runs_in_a_process_of_its_own(reference, fv_options):
    """Own mode: the reference's copy lives in another process, which imported nothing of this package, started
    once per session and model; its cost is recorded."""
    from fv.pytest_plugin import load_session_model, reference_own_model
    from fv.reference.process import session_costs

    lm = load_session_model(fv_options, "tiny-llama")
    rm = reference_own_model(reference, lm)
    assert rm.process.pid not in (None, os.getpid())
    assert reference_own_model(reference, lm) is rm  # once per session, never per test
    mine = [m for m, f in rm.process.fv_modules.items() if f.startswith(str(REPO_ROOT / "fv"))]
    assert not mine, f"the reference process imported fv's own modules: {mine}"
    cost = next(c for c in session_costs() if c["pid"] == rm.process.pid)
    assert cost["start_seconds"] > 0 and rm.load_seconds > 0
    print(f"reference process cost: start {cost['start_seconds']:.2f}s, load {rm.load_seconds:.2f}s")


@pytest.mark.parametrize("src", ["upstream", "fork"])
def test_hub_id_is_handed_to_the_reference_as_typed(src, reference, fv_options, tmp_path, monkeypatch):
    """``--fv-model gpt2-xl``, a hub id in the local cache: the reference's loader gets 'gpt2-xl' (its GPT-2 branch
    takes only that exact name), fv resolves it for itself, and the own-mode gate passes bit for bit, against
    upstream and against the user's fork (its 4-bit Llama rule beside upstream's GPT-2 branch, its own ``fv``)."""
    from huggingface_hub import constants

    from fv.model.loading import load_model
    from fv.pytest_plugin import reference_own_model
    from fv.reference.adapter import Reference

    cache = tmp_path / "hf" / "hub"
    build_hf_cache(cache, "gpt2-xl", ensure_tiny_model("tiny-gpt2"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    lm = load_model("gpt2-xl", "cpu", "auto")
    if src == "fork":
        ref = Reference(build_quant_fork(reference.src_root, tmp_path / "project"), reference.baukit_root, compat=True,
                        in_process=False)
        rm = ref.load_own("gpt2-xl", "cpu", fv_path=lm.path)
    else:
        ref, rm = reference, reference_own_model(reference, lm)
    assert rm.spec == "gpt2-xl" and rm.reference_config["name_or_path"] == "gpt2-xl"
    assert lm.path.resolve() != Path("gpt2-xl").resolve() and "snapshots" in str(lm.path)
    print(f"gpt2-xl hub id, {src}: largest max_abs_diff {assert_bit_exact(gate(ref, lm, rm, tmp_path / 'out'))}")


def test_capitalised_llama_folder_stops_the_session_in_one_line(reference, tmp_path):
    """A folder named as Meta names it: the reference's loader lowercases and loads, its hook's case-sensitive
    'llama' misses; the session stops before any stage with exit code 4 and one line naming the word and the fix."""
    import tempfile

    # a folder whose path holds no lowercase 'llama' anywhere (pytest's tmp_path carries the test's name)
    home = Path(tempfile.mkdtemp(prefix="fvcap-"))
    link = home / "Meta-Llama-3.1-8B"
    link.symlink_to(ensure_tiny_model("tiny-llama"), target_is_directory=True)
    assert "llama" not in str(link)
    cmd = [sys.executable, "-m", "pytest", str(REPO_ROOT / "tests" / "parity" / "test_m2_stage_parity.py"), "--co", "-q",
           "-p", "no:xdist", "-p", "no:cacheprovider", "--fv-model", str(link), "--src-root", str(reference.src_root)]
    if os.environ.get("FV_BAUKIT_ROOT") is None and reference.baukit_root:
        cmd += ["--baukit-root", reference.baukit_root]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    err = [l for l in (proc.stderr + proc.stdout).splitlines() if l.strip()]
    assert proc.returncode == 4, "\n".join(err[-20:])
    line = next(l for l in err if "case-sensitive" in l or "case-sensitively" in l)
    assert "'llama'" in line and "lowercase" in line and "intervention_utils.py" in line and "UnboundLocalError" in line, line
    assert not any(l.startswith("Traceback") for l in err)


def test_reference_process_crash_is_one_line_with_its_log(reference, tmp_path):
    """A reference process that dies is reported in one line with the last lines of its log."""
    from fv.errors import FVError
    from fv.reference.adapter import Reference

    src = tmp_path / "crash" / "src"
    shutil.copytree(reference.src_root, src, ignore=shutil.ignore_patterns("__pycache__"))
    mu = src / "utils" / "model_utils.py"
    mu.write_text(mu.read_text().replace("    assert model_name is not None\n",
                                         "    import os, sys\n    print('fork-crash-marker', file=sys.stderr, flush=True)\n"
                                         "    os._exit(3)\n", 1))
    ref = Reference(src, reference.baukit_root, compat=True, in_process=False)
    with pytest.raises(FVError) as exc:
        ref.load_own(str(ensure_tiny_model("tiny-llama")), "cpu", fv_path=ensure_tiny_model("tiny-llama"))
    msg = str(exc.value)
    assert "\n" not in msg and "exit code 3" in msg and "fork-crash-marker" in msg, msg


@needs_quant
def test_fork_with_its_own_fv_package_loads_4bit_and_fv_matches_bit_for_bit(reference, tmp_path):
    """The real user's fork: its loader imports ``fv.quant_config`` from the project's own ``fv`` package and loads a
    bf16 Llama named ``*8b*`` in NF4; its hook dequantizes. fv finds that rule by reading what the loader produced,
    loads the same 4-bit model, and every stage matches bit for bit."""
    from fv.model.loading import load_model
    from fv.reference.adapter import Reference

    project = tmp_path / "project"
    src = build_quant_fork(reference.src_root, project)
    model = bf16_llama(tmp_path / "models" / "tiny-llama-8b-bf16")
    ref = Reference(src, reference.baukit_root, compat=True, in_process=False)
    rm = ref.load_own(str(model), "cpu", fv_path=model)
    o_proj = rm.quantized.get("model.layers.0.self_attn.o_proj")
    assert o_proj and o_proj["class"] == "Linear4bit" and o_proj["quant_type"] == "nf4" and o_proj["nested"], rm.quantized
    assert rm.describe["quantization_config"]["bnb_4bit_compute_dtype"] == "float16"
    assert "bfloat16" in rm.describe["param_dtypes"]
    users = rm.process.fv_modules
    assert "fv.quant_config" in users and all(f.startswith(str(project)) for f in users.values()), users
    assert ref.probe_hook(rm) is None
    lm = load_model(str(model), "cpu", "auto", produced=rm.describe)
    assert type(lm.info.attn_out[0]).__name__ == "Linear4bit" and "4-bit" in lm.loading_rule
    print(f"fork 4-bit llama: largest max_abs_diff {assert_bit_exact(gate(ref, lm, rm, tmp_path / 'out'))}")


@needs_quant
def test_upstream_70b_rule_loads_4bit_or_says_what_it_needs(reference, tmp_path):
    """Upstream's ``70b`` branch (NF4, double quantization, compute float16, no dtype, LlamaTokenizer) on a bf16
    tiny Llama named ``*70b*``: its 4-bit load is read as produced; where its LlamaTokenizer does not tokenize as
    the folder's own tokenizer (no sentencepiece model here), the session stops before any stage in one line
    saying what it needs; where it does, fv matches bit for bit."""
    from fv.model.loading import load_model
    from fv.reference.probes import session_problem

    model = bf16_llama(tmp_path / "models" / "tiny-llama-70b-bf16")
    loaded = {}

    def load(ref, spec, path, device):
        loaded["rm"] = ref.load_own(spec, device, fv_path=path)
        return loaded["rm"]

    msg = session_problem(reference, [str(model)], "cpu", load)
    rm = loaded["rm"]
    assert rm.quantized["model.layers.0.self_attn.o_proj"]["class"] == "Linear4bit"
    assert rm.describe["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    if msg is not None:
        assert "\n" not in msg and "LlamaTokenizer" in msg and "tokenizer.model" in msg and "sentencepiece" in msg, msg
        print(f"upstream 70b: {msg}")
        return
    lm = load_model(str(model), "cpu", "auto", produced=rm.describe)
    print(f"upstream 70b 4-bit llama: largest max_abs_diff {assert_bit_exact(gate(reference, lm, rm, tmp_path / 'out'))}")


@needs_quant
@pytest.mark.slow(seconds=25)
def test_m2_session_from_the_users_project_root_passes_against_their_4bit_fork(reference, tmp_path):
    """The done-when of the reference issue, as the user runs it: from their project root (which holds `src/` and
    their own package `fv`), the installed `pytest` entry point, `-m m2` in the default mode against their fork, which
    loads the `*8b*` bf16 Llama in NF4 through `fv.quant_config`: the door checks defer to the reference's own
    process, and every stage passes bit for bit (tolerance exact) on fv's 4-bit copy."""
    from fv.cli import main

    project = tmp_path / "project"
    build_quant_fork(reference.src_root, project)
    model = bf16_llama(tmp_path / "models" / "my-llama-8b-bf16")
    ft = tmp_path / "trials.json"
    assert main(["make-trials", "--dataset", str(REPO_ROOT / "fixtures" / "antonym_tiny.json"), "--tokenizer", str(model),
                 "--n-trials", "2", "--out", str(ft)]) == 0
    cmd = [str(Path(sys.executable).parent / "pytest"), "-m", "m2", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
           "--rootdir", str(REPO_ROOT), str(REPO_ROOT / "tests"), "--fv-model", str(model), "--fixed-trials", str(ft),
           "--src-root", str(project / "src"), "--src-compat", "--fv-out", str(tmp_path / "out")]
    if reference.baukit_root:
        cmd += ["--baukit-root", str(reference.baukit_root)]
    env = {k: v for k, v in os.environ.items() if k not in ("FV_SRC_ROOT", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT")}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=project, env=env, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert re.search(r"my-llama-8b-bf16 x trials: PASS against the live reference .*\(tolerance exact\)", out), out[-3000:]
    report = next((tmp_path / "out").rglob("parity_suite_report.json"))
    import json

    meta = json.loads(report.read_text())["meta"]
    assert "4-bit nf4" in meta["loading_rule"] and meta["src_model_mode"] == "own", meta["loading_rule"]
