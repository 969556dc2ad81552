"""Goldens carry the identity of the model and trials they were made with (fv/parity/identity.py), and every door
goldens come in by refuses those of another model in one line, before any stage: the committed snapshots (the
parity engine), ``--golden-dir`` (at the session's start and in the gate) and ``fv golden import``.

"Another model" here is the tiny Llama's twin: the same recipe and shape with another seed
(``build_tiny_model`` with ``seed=999``), as a checkpoint sweep or a second seed gives. The identity ignores what
does not change the computation: ``transformers_version``, ``_name_or_path``, the dtype key's spelling, the rope
keys' spelling, the weight files' layout (one file, shards, a ``.bin``).

"One tiny model built under transformers 4.44.2 and 5.x has one identity" is checked for real: the user's pinned
4.44.2 (tests/support/pinned_transformers.py, set up by ``.ci/run``) builds the SentencePiece tiny Llama 2 in a
subprocess, writing its own config.json (``torch_dtype``, ``rope_theta``/``rope_scaling`` instead of
``rope_parameters``); the tensors are numpy's PCG64 draws either way (fv/model/tiny.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fv.errors import FVError
from fv.io import save_tensors, write_json
from fv.model.loading import load_model
from fv.model.tiny import TINY_MODELS, build_tiny_model, ensure_tiny_model
from fv.parity.golden import check_identity, deserialize, golden_dir
from fv.parity.identity import (
    NOT_RECORDED,
    config_digest,
    golden_identity,
    model_identity,
    weights_digest,
)
from fv.parity.stages import Params
from fv.parity.user_goldens import (
    REFERENCE_META,
    USER_FILES,
    check_identity_at_start,
    golden_source,
    import_goldens,
)
from fv.paths import FIXTURES, REPO_ROOT, SNAPSHOT_ROOT
from fv.runtime.trials import load_trials, make_icl_trials, save_trials

COMMITTED = SNAPSHOT_ROOT / "tiny-llama" / "fixed_trials_antonym_tiny_tiny-llama"  # t2: 2 trials, 5 shots


@pytest.fixture(scope="module")
def llama():
    return load_model("tiny-llama", "cpu")


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    """The tiny Llama's recipe and shape with another seed: a model fv cannot tell from its shapes."""
    return build_tiny_model(dataclasses.replace(TINY_MODELS["tiny-llama"], seed=999),
                            tmp_path_factory.mktemp("twin") / "tiny-llama-8b-rule-twin")


@pytest.fixture(scope="module")
def trials(llama, tmp_path_factory):
    """The committed t2 goldens' trials, made as the family goldens' are (tests/self/verdict/test_golden_sensitivity.py)."""
    raw = make_icl_trials(FIXTURES / "antonym_tiny.json", llama.tokenizer, 2, 5, seed=0, model_name_for_tokenizer=llama.name,
                          model_prepend_bos=llama.prepend_bos, prepend_bos_token_used=not llama.prepend_bos,
                          dataset_json_label="antonym_tiny.json")
    path = tmp_path_factory.mktemp("ft") / f"{COMMITTED.name}.json"
    save_trials(path, raw)
    return load_trials(path)


def _twin_identity(twin, trials):
    return golden_identity(SimpleNamespace(path=twin, name="tiny-llama (seed 999)", model=None), trials)


def _user_folder(root: Path, identity: dict | None) -> Path:
    """A user's golden folder with the committed t2 values under src's names, and, when given, the identity
    ``fv reference`` records in reference_meta.json."""
    folder = root / "results" / "antonym_tiny" / COMMITTED.name
    t2 = COMMITTED / "t2"
    save_tensors(folder / USER_FILES["mean_activations"].format(dataset="antonym_tiny"),
                 deserialize("tensor", (t2 / "mean_activations.safetensors").read_bytes()))
    write_json(folder / USER_FILES["dummy_labels"].format(dataset="antonym_tiny"),
               {"labels": json.loads((t2 / "dummy_labels.json").read_text())})
    save_tensors(folder / USER_FILES["indirect_effect"].format(dataset="antonym_tiny"),
                 deserialize("tensor", (t2 / "indirect_effect.safetensors").read_bytes()))
    if identity is not None:
        write_json(folder / REFERENCE_META, {"source": "reference", "identity": identity})
    return folder


# ---- the identity itself -----------------------------------------------------------------------------------
def test_identity_ignores_what_does_not_compute(tmp_path):
    src = ensure_tiny_model("tiny-llama")
    base = model_identity(folder=src, name="tiny-llama")
    copy = tmp_path / "elsewhere-named-folder"
    shutil.copytree(src, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg.update({"transformers_version": "9.9.9", "_name_or_path": "/somewhere/else", "use_cache": False})
    cfg["torch_dtype"] = cfg.pop("dtype")
    (copy / "config.json").write_text(json.dumps(cfg, indent=5))
    other = model_identity(folder=copy, name="tiny-llama")
    assert (other["config_sha256"], other["weights_sha256"]) == (base["config_sha256"], base["weights_sha256"])
    cfg["num_hidden_layers"] = 11  # a field that computes does count
    assert config_digest(cfg) != base["config_sha256"]


def test_identity_as_transformers_4_44_2_writes_the_config(tmp_path):
    """Simulated (see the module doc): the config.json 4.44.2 writes for the same tiny model gives one identity."""
    src = ensure_tiny_model("tiny-llama")
    cfg = json.loads((src / "config.json").read_text())
    old = {k: v for k, v in cfg.items() if v is not None and k not in ("dtype", "rope_parameters")}
    old.update({"torch_dtype": cfg["dtype"], "transformers_version": "4.44.2",
                "rope_theta": cfg["rope_parameters"]["rope_theta"], "rope_scaling": None})
    assert config_digest(old) == config_digest(cfg)


def test_one_identity_under_transformers_4_44_2_and_5(tmp_path):
    """The same tiny model built by the user's pinned transformers 4.44.2 (in its own process) and by this venv's
    5.x: two config.json files written differently, one identity."""
    import transformers

    from tests.support.pinned_transformers import install_command, pinned_env

    env = pinned_env()
    if env is None:
        pytest.skip(f"transformers 4.44.2 is not set up beside this venv; set it up with: {install_command()}")
    out = tmp_path / "built-by-4.44.2"
    script = ("import transformers, sys; from fv.model.tiny import TINY_MODELS, build_tiny_model; "
              "build_tiny_model(TINY_MODELS['tiny-llama2spm'], sys.argv[1]); print(transformers.__version__)")
    proc = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] == "4.44.2" and transformers.__version__.startswith("5."), proc.stdout
    new = ensure_tiny_model("tiny-llama2spm")
    old_cfg, new_cfg = (json.loads((f / "config.json").read_text()) for f in (out, new))
    assert old_cfg["transformers_version"] == "4.44.2" and "torch_dtype" in old_cfg and "rope_theta" in old_cfg
    assert "rope_parameters" in new_cfg and old_cfg != new_cfg  # two writers, two files
    assert model_identity(folder=out, name="m") == model_identity(folder=new, name="m")


def test_weights_digest_ignores_file_layout(tmp_path):
    from transformers import AutoModelForCausalLM

    src = ensure_tiny_model("tiny-llama")
    m = AutoModelForCausalLM.from_pretrained(str(src))
    m.save_pretrained(str(tmp_path / "shards"), max_shard_size="200KB")
    assert len(list((tmp_path / "shards").glob("*.safetensors"))) > 1
    (tmp_path / "bin").mkdir()
    torch.save(m.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    assert weights_digest(tmp_path / "shards") == weights_digest(src) == weights_digest(tmp_path / "bin")


def test_another_seed_is_another_model(twin):
    ours, theirs = model_identity(folder=ensure_tiny_model("tiny-llama")), model_identity(folder=twin)
    assert ours["config_sha256"] == theirs["config_sha256"] and ours["weights_sha256"] != theirs["weights_sha256"]


def test_committed_goldens_carry_the_identity_of_their_build():
    """Every committed golden's meta records the identity of its tiny model's deterministic build and of the
    trials in its prompt.json (scripts/add_golden_identity.py --check)."""
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        import add_golden_identity
    finally:
        sys.path.pop(0)
    assert add_golden_identity.main(["--check"]) == 0


# ---- the committed goldens (the parity engine) ---------------------------------------------------------------
def _snapshot_copy(root: Path, identity: dict | None) -> Path:
    dest = root / "tiny-llama" / COMMITTED.name
    shutil.copytree(COMMITTED / "t2", dest / "t2")
    meta = json.loads((COMMITTED / "t2.meta.json").read_text())
    if identity is None:
        meta.pop("identity")
    else:
        meta["identity"] = identity
    write_json(dest / "t2.meta.json", meta)
    return dest / "t2"


def test_committed_goldens_of_another_model_are_refused_before_any_stage(llama, twin, trials, tmp_path, monkeypatch):
    import fv.parity.run as run_mod
    import fv.parity.sides as sides

    assert check_identity(COMMITTED / "t2", llama, trials, trials.trials)[0].startswith("goldens' identity checked")
    _snapshot_copy(tmp_path / "snapshots", _twin_identity(twin, trials))

    def no_stage(*_a, **_k):
        raise AssertionError("a stage ran")

    monkeypatch.setattr(sides, "fv_stage_values", no_stage)
    with pytest.raises(FVError) as e:
        run_mod.run_parity(llama, trials, Params(n_top_heads=5, edit_layer=3, max_trials=2), None, None,
                           snapshot_root=tmp_path / "snapshots")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("goldens of another model:") and "weights digest" in msg
    assert "--snapshot-update" in msg


def test_committed_goldens_without_identity_are_noted(llama, trials, tmp_path):
    folder = _snapshot_copy(tmp_path / "snapshots", None)
    notes = check_identity(folder, llama, trials, trials.trials)
    assert notes and notes[0].startswith(NOT_RECORDED)


# ---- --golden-dir and fv golden import -------------------------------------------------------------------
def test_golden_dir_of_another_model_is_refused(llama, twin, trials, tmp_path):
    folder = _user_folder(tmp_path, _twin_identity(twin, trials))
    for check in (lambda: golden_source(folder, llama, trials), lambda: check_identity_at_start(folder, "tiny-llama", trials)):
        with pytest.raises(FVError) as e:
            check()
        assert "\n" not in str(e.value) and str(e.value).startswith("goldens of another model:")
    # the same folder with this model's identity is taken, and says it was checked
    ok = _user_folder(tmp_path / "ok", golden_identity(llama, trials))
    assert any("identity checked" in n for n in golden_source(ok, llama, trials).notes)


def test_golden_dir_without_identity_is_noted(llama, trials, tmp_path):
    """src's own files carry no identity: what its indirect_effect_args.txt says is checked and named."""
    folder = _user_folder(tmp_path, None)
    notes = golden_source(folder, llama, trials).notes
    assert any(n.startswith(NOT_RECORDED) and "no *_args.txt" in n for n in notes)
    (folder / "indirect_effect_args.txt").write_text(json.dumps({"model_name": "tiny-llama", "n_shots": 5, "n_trials": 2}))
    assert any("n_shots 5" in n for n in golden_source(folder, llama, trials).notes)
    (folder / "indirect_effect_args.txt").write_text(json.dumps({"model_name": "tiny-llama", "n_shots": 10}))
    with pytest.raises(FVError, match="^goldens of other trials: .*n_shots 10"):
        golden_source(folder, llama, trials)


def test_golden_import_of_another_model_is_refused(llama, twin, trials, tmp_path, capsys):
    from fv.cli import main

    folder = _user_folder(tmp_path, _twin_identity(twin, trials))
    with pytest.raises(FVError, match="^goldens of another model:"):
        import_goldens(folder, llama, trials, tmp_path / "snapshots")
    rc = main(["golden", "import", str(folder), "--model", "tiny-llama", "--fixed-trials", str(trials.path),
               "--snapshots", str(tmp_path / "snapshots"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc != 0 and len(err.strip().splitlines()) == 1 and "goldens of another model:" in err, err
    assert not golden_dir(tmp_path / "snapshots", "tiny-llama", trials.id, 2).exists()


def test_imported_goldens_keep_an_identity(llama, twin, trials, tmp_path):
    """src's files carry none: the import records this model's, marked as asserted, and a replay on another model
    is then refused."""
    folder = _user_folder(tmp_path, None)
    dest = import_goldens(folder, llama, trials, tmp_path / "snapshots")
    meta = json.loads((dest.parent / f"{dest.name}.meta.json").read_text())
    assert meta["identity"]["weights_sha256"] == model_identity(llama)["weights_sha256"]
    assert "asserted" in meta["identity"]["recorded_by"] and any(n.startswith(NOT_RECORDED) for n in meta["notes"])
    other = SimpleNamespace(path=twin, name="tiny-llama", model=None)
    with pytest.raises(FVError, match=r"^goldens of another model: .*fv golden import .* --force"):
        check_identity(dest, other, trials, trials.trials)


@pytest.mark.slow
def test_pytest_golden_dir_of_another_model_stops_the_session(twin, trials, tmp_path):
    """``pytest -m "m1 or m2" --golden-dir DIR`` with another model's goldens: one line at the start, exit 4."""
    folder = _user_folder(tmp_path, _twin_identity(twin, trials))
    cmd = [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "-q", "-m", "m1 or m2",
           str(REPO_ROOT / "tests" / "golden" / "test_m1_golden_replay.py"), "--fv-model", "tiny-llama",
           "--fixed-trials", str(trials.path), "--golden-dir", str(folder), "--fv-out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4, out[-3000:]
    lines = [l for l in out.splitlines() if "goldens of another model" in l]
    assert len(lines) == 1 and "passed" not in out and "failed" not in out, out[-3000:]


def test_goldens_beside_a_live_reference_are_checked_too(llama, twin, trials, tmp_path, monkeypatch):
    """With the live reference as the other side, M1 still compares fv with the golden files (syrupy): goldens of
    another model there fail in one line too, not element by element."""
    import fv.paths
    from fv.parity.stages import StageValues, trial_key
    from fv.pytest_plugin import assert_golden

    _snapshot_copy(tmp_path / "snapshots", _twin_identity(twin, trials))
    monkeypatch.setattr(fv.paths, "SNAPSHOT_ROOT", tmp_path / "snapshots")
    t2 = COMMITTED / "t2"
    fvv = StageValues(values={"slot": {"dummy_labels": json.loads((t2 / "dummy_labels.json").read_text())},
                              "mean_activations": deserialize("tensor", (t2 / "mean_activations.safetensors").read_bytes())})
    run = SimpleNamespace(source="reference", lm=llama, trials=trials, params=Params(max_trials=2), fv=fvv,
                          trial_keys=[trial_key(t) for t in trials.trials])
    with pytest.raises(pytest.fail.Exception, match="^goldens of another model:"):
        assert_golden(run, "mean_activations", None, update=False)


def test_universal_goldens_of_another_model_are_refused(twin, tmp_path):
    """The universal gate's committed goldens (snapshots/tiny-llama/universal/) replayed on the seed-999 twin, named
    ``tiny-llama`` as a checkpoint of the same name would be: refused in one line, before fv's universal run."""
    named = tmp_path / "tiny-llama"
    shutil.copytree(twin, named)
    env = {k: v for k, v in os.environ.items() if k not in ("FV_SRC_ROOT", "FV_BAUKIT_ROOT", "PYTEST_XDIST_WORKER",
                                                             "PYTEST_XDIST_WORKER_COUNT")}
    proc = subprocess.run([sys.executable, "-m", "pytest", str(REPO_ROOT / "tests" / "parity" / "test_universal_fv.py"),
                           "-m", "universal", "-k", "aggregation", "--fv-model", str(named), "-p", "no:xdist",
                           "-p", "no:cacheprovider", "-q"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-4000:]
    lines = [line for line in out.splitlines() if line.startswith("goldens of another model: the universal goldens in")]
    assert len(lines) == 1 and "weights digest" in lines[0] and "--snapshot-update" in lines[0], out[-4000:]
