"""The gate against a fork of the reference's ``src/``, as users run it: their own copy with local changes.

The fork is built at run time from the reference in use (``--src-root``), in a temporary folder, by applying the
changes a real fork carries (nothing of the reference is committed here):

(a) dummy labels, activation gathering, indirect effects and evaluation never write the BOS text into prompts
    (``prepend_bos = False`` always, where upstream writes it exactly when MODEL_CONFIG's ``prepend_bos`` is false);
(b) the FV injection handles tensor layer outputs, so it is live without ``--src-compat``;
(c) ``compute_duplicated_labels`` asserts that every slot is filled;
(d) ``activation_replacement_per_class_intervention`` takes a ``token_id_of_interest``;
(e) an extra helper function.

The reference's modules are imported under fixed names (``utils``, ``compute_indirect_effect``), so one process
holds one src: the fork's gate runs in a pytest subprocess, the family gate of ``test_families.py`` unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from fv.paths import REPO_ROOT
from tests.support.forks import build_fork

pytestmark = [pytest.mark.m2, pytest.mark.tiny, pytest.mark.slow]

@pytest.fixture(scope="module")
def fork_root(reference, tmp_path_factory) -> Path:
    return build_fork(reference.src_root, tmp_path_factory.mktemp("fork"))


def run_family_gate(src: Path, out: Path, fv_options, *extra: str) -> tuple[dict, str]:
    """``pytest tests/self/runtime/test_families.py`` in a fresh process against ``src``; per-test outcomes and output."""
    junit = out / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", str(REPO_ROOT / "tests" / "self" / "runtime" / "test_families.py"), "--fv-self-tests", "-p", "no:cacheprovider",
           "-p", "no:xdist", "-q", "--src-root", str(src), "--require-src", f"--junitxml={junit}", "--fv-out", str(out / "results"),
           "--fv-device", fv_options.device, *extra]
    if fv_options.baukit_root:
        cmd += ["--baukit-root", fv_options.baukit_root]
    env = {k: v for k, v in os.environ.items() if k not in ("FV_SRC_ROOT", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT")}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=out, env=env, timeout=1500)
    outcomes = {}
    if junit.is_file():
        for case in ET.parse(junit).getroot().iter("testcase"):
            kind = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
            outcomes[case.get("name")] = kind
    return outcomes, proc.stdout[-4000:] + proc.stderr[-2000:]


@pytest.mark.slow(seconds=105)
def test_fork_gate_passes_on_every_family(fork_root, fv_options, tmp_path):
    """Every stage of every family, bit for bit against the fork as its users run it (its own loader, in its own
    process; GPT-2, whose folder name its loader refuses, on fv's model object), with its injection live without
    --src-compat and trials made for its BOS rule; and trials made for the other rule refused in one line. (The
    shared mode of the other families runs the same fork functions on fv's model: ``test_families.py`` covers it
    against upstream.)"""
    outcomes, output = run_family_gate(fork_root, tmp_path, fv_options, "-k",
                                       "(family_stage and (own or tiny-gpt2)) or wrong_bos or bos_rule")
    stage = {k: v for k, v in outcomes.items() if k.startswith("test_family_stage")}
    assert stage, f"the fork's gate ran no stage test:\n{output}"
    bad = {k: v for k, v in outcomes.items() if v != "passed"}
    assert not bad, f"against the fork: {bad}\n{output}"
    # 6 families own + GPT-2 shared, 7 stages each: nothing skipped, the injection included
    assert len(stage) == 7 * 7 and all("-own-" in k or "tiny-gpt2-shared" in k for k in stage), sorted(stage)
    assert any(k.startswith("test_family_wrong_bos_trials_refused") for k in outcomes)


def test_fork_and_upstream_want_different_trials_on_a_no_bos_tokenizer(fv_options):
    """Where the tokenizer adds no BOS, upstream writes the BOS text into its prompts and the fork does not: the
    two srcs compute different numbers, and fv, matching each (the gates above), follows the trials it is given."""
    from fv.parity.stages import Params, fv_stage_values
    from fv.pytest_plugin import load_session_model
    from tests.support.families import family_trials

    lm = load_session_model(fv_options, "tiny-gpt-j")
    assert not lm.prepend_bos
    params = Params(n_top_heads=5, edit_layer=3, max_trials=2, mode="exact")
    values = {}
    for bos in (True, False):
        trials = family_trials(lm, Path(fv_options.out_root) / "_trials" / f"bos-{bos}", bos_text=bos)
        subset = trials.subset(2)
        values[bos] = fv_stage_values(lm, subset, params, trials.meta.get("prefixes"), trials.meta.get("separators"))
    up, fork = values[True].values, values[False].values
    assert len(up["slot"]["dummy_labels"]) > len(fork["slot"]["dummy_labels"])
    assert up["mean_activations"].shape[2] > fork["mean_activations"].shape[2]
    assert not torch.equal(up["fv"], fork["fv"])


# a fork that adds a Mistral branch where upstream has its Llama one: the loader's branch and every hook branch that
# tests 'llama' in the model path (what the door check names as missing for a Mistral model against upstream)
MISTRAL_FORK_CHANGES = [
    ("utils/model_utils.py", r"elif 'llama' in model_name\.lower\(\):",
     "elif 'llama' in model_name.lower() or 'mistral' in model_name.lower():", 1),
    ("utils/extract_utils.py", r"'llama' in model_config\['name_or_path'\]",
     "('llama' in model_config['name_or_path'] or 'mistral' in model_config['name_or_path'])", 2),
    ("utils/intervention_utils.py", r"'llama' in model_config\['name_or_path'\]",
     "('llama' in model_config['name_or_path'] or 'mistral' in model_config['name_or_path'])", 2),
    ("utils/eval_utils.py", r"'llama' in model_config\['name_or_path'\]",
     "('llama' in model_config['name_or_path'] or 'mistral' in model_config['name_or_path'])", 1),
]


def test_a_fork_with_a_mistral_branch_makes_mistral_comparable(reference, tmp_path):
    """Upstream lacks Mistral (the door check stops a gate on it in one line, ``test_preflight.py``); a fork that adds
    the branch, loading it as its Llama branch does, makes it comparable: its hook probe is silent and every stage
    matches bit for bit, in its own process, the model's sliding window (shorter than the prompts) included."""
    from fv.model.loading import load_model
    from fv.model.tiny import SLIDING_WINDOW, ensure_tiny_model
    from fv.reference.adapter import Reference
    from fv.reference.capability import probe_reference
    from tests.support.reference_gate import assert_bit_exact, gate

    src = build_fork(reference.src_root, tmp_path / "mistral-fork", MISTRAL_FORK_CHANGES)
    path = ensure_tiny_model("tiny-mistral")
    assert "mistral" in path.name
    upstream_says = probe_reference(reference, path, "tiny-mistral").finding
    assert upstream_says is not None and "mistral" in upstream_says.line, upstream_says
    fork = Reference(src, reference.baukit_root, compat=True, in_process=False)  # one src per process: the fork in its own
    rm = fork.load_own(str(path), "cpu", fv_path=path)
    assert fork.probe_hook(rm) is None  # its hook takes the Mistral branch (upstream's raises, as its door check says)
    lm = load_model(str(path), "cpu", "auto", produced=rm.describe)
    assert lm.info.model_type == "mistral" and rm.describe["config"]["sliding_window"] == SLIDING_WINDOW
    run = gate(fork, lm, rm, tmp_path / "out")
    trials_len = min(len(v["clean_input_ids"]) for v in run.src.values["prompt"].values())
    assert trials_len > SLIDING_WINDOW  # the window really cuts
    print(f"mistral fork ({lm.dtype}): largest max_abs_diff {assert_bit_exact(run)}; shortest prompt {trials_len} tokens, "
          f"window {SLIDING_WINDOW}")
