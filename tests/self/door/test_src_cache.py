"""The src-values cache: a rerun reads the reference's side; a change to one reference file, to the weights or
to the trials is a miss; a corrupt entry is recomputed; two processes at once compute it once."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fv.model.loading import load_model
from fv.parity.sides import src_with_origin
from fv.parity.src_cache import SrcCache
from fv.parity.stages import Params
from fv.paths import FIXTURES, REPO_ROOT
from fv.runtime.trials import load_trials, make_icl_trials, save_trials
from tests.support.counting_source import PARAMS, Counting

pytestmark = [pytest.mark.m2, pytest.mark.tiny]


@pytest.fixture
def world(tmp_path):
    """A copy of a tiny model, a fake reference src/ tree and fixed trials, all in tmp_path."""
    from fv.model.tiny import ensure_tiny_model

    model_dir = tmp_path / "tiny-llama-copy"
    shutil.copytree(ensure_tiny_model("tiny-llama"), model_dir)
    src = tmp_path / "src"
    (src / "utils").mkdir(parents=True)
    (src / "utils" / "extract_utils.py").write_text("def f():\n    return 1\n")
    (src / "compute_indirect_effect.py").write_text("X = 1\n")
    lm = load_model(str(model_dir), "cpu", "float32")
    trials_path = tmp_path / "trials.json"
    save_trials(trials_path, make_icl_trials(FIXTURES / "antonym_tiny.json", lm.tokenizer, 2, 3, 0, model_prepend_bos=lm.prepend_bos))
    return {"model_dir": model_dir, "src": src, "lm": lm, "trials": load_trials(trials_path), "cache": SrcCache(tmp_path / "cache"),
            "tmp": tmp_path}


def test_rerun_reads_the_cache_and_values_round_trip(world):
    c = Counting(world["src"], world["cache"])
    first, err1, origin1 = src_with_origin(c.source, world["lm"], world["trials"], PARAMS)
    second, err2, origin2 = src_with_origin(c.source, world["lm"], world["trials"], PARAMS)
    assert c.calls == 1 and origin1.startswith("computed") and origin2.startswith("cache ")
    assert err1 == err2 is None
    for stage, value in first.values.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, second.values[stage]) and value.dtype == second.values[stage].dtype
        else:
            assert json.dumps(value, sort_keys=True) == json.dumps(second.values[stage], sort_keys=True)
    fast = Params(**{**PARAMS.as_dict(), "mode": "fast"})  # fv's mode does not change the reference's values
    assert src_with_origin(c.source, world["lm"], world["trials"], fast)[2].startswith("cache ")
    assert c.calls == 1


def test_a_changed_reference_file_weights_or_trials_is_a_miss(world):
    c = Counting(world["src"], world["cache"])
    src_with_origin(c.source, world["lm"], world["trials"], PARAMS)
    # one reference file
    f = world["src"] / "utils" / "extract_utils.py"
    f.write_text(f.read_text() + "# edited\n")
    assert src_with_origin(c.source, world["lm"], world["trials"], PARAMS)[2].startswith("computed") and c.calls == 2
    # bytecode written by importing the reference is not part of it
    (world["src"] / "utils" / "__pycache__").mkdir()
    (world["src"] / "utils" / "__pycache__" / "extract_utils.cpython-311.pyc").write_bytes(b"\0")
    assert src_with_origin(c.source, world["lm"], world["trials"], PARAMS)[2].startswith("cache ") and c.calls == 2
    # the weights: one value of one tensor in the model's file
    from safetensors.torch import load_file, save_file

    wfile = next(world["model_dir"].glob("*.safetensors"))
    tensors = load_file(str(wfile))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1
    save_file(tensors, str(wfile), metadata={"format": "pt"})
    lm2 = load_model(str(world["model_dir"]), "cpu", "float32")
    assert src_with_origin(c.source, lm2, world["trials"], PARAMS)[2].startswith("computed") and c.calls == 3
    # a large model's weights are known by its files' hashes: the same edit is seen there too
    import fv.parity.src_cache as sc

    digest = sc.weights_digest(world["model_dir"], lm2.model)
    old = sc.TENSOR_HASH_MAX_BYTES
    sc.TENSOR_HASH_MAX_BYTES = 0
    try:
        by_files = sc.weights_digest(world["model_dir"], lm2.model)
        tensors[name].view(-1)[0] += 1
        save_file(tensors, str(wfile), metadata={"format": "pt"})
        assert by_files.startswith("files:") and sc.weights_digest(world["model_dir"], lm2.model) != by_files
    finally:
        sc.TENSOR_HASH_MAX_BYTES = old
    assert digest.startswith("tensors:")
    # the trials: the same file with one trial fewer
    raw = json.loads(Path(world["trials"].path).read_text())
    raw["trials"] = raw["trials"][:1]
    other = world["tmp"] / "trials_one.json"
    save_trials(other, raw)
    assert src_with_origin(c.source, lm2, load_trials(other), PARAMS)[2].startswith("computed") and c.calls == 4
    # and the parameters
    assert src_with_origin(c.source, lm2, world["trials"], Params(n_top_heads=4, edit_layer=1, max_trials=2))[2].startswith("computed")


@pytest.mark.parametrize("damage", ["truncate", "edit_json", "drop_manifest"])
def test_a_corrupt_or_partial_entry_is_recomputed(world, damage):
    c = Counting(world["src"], world["cache"])
    src_with_origin(c.source, world["lm"], world["trials"], PARAMS)
    (entry,) = [p for p in world["cache"].root.iterdir() if p.is_dir() and p.name != "weights_sha256"]
    if damage == "truncate":
        data = (entry / "values.safetensors").read_bytes()
        (entry / "values.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "edit_json":
        (entry / "values.json").write_text((entry / "values.json").read_text().replace("0.5", "0.25"))
    else:
        (entry / "manifest.json").unlink()
    sv, _, origin = src_with_origin(c.source, world["lm"], world["trials"], PARAMS)
    assert origin.startswith("computed") and c.calls == 2
    assert sv.values["top_heads"] == [[0, 1, 0.5]]
    assert src_with_origin(c.source, world["lm"], world["trials"], PARAMS)[2].startswith("cache ")


def test_no_cache_computes_every_time(world):
    c = Counting(world["src"], None)
    origins = [src_with_origin(c.source, world["lm"], world["trials"], PARAMS)[2] for _ in range(2)]
    assert origins == ["computed", "computed"] and c.calls == 2


# One of two processes asking for the same values: says "asking" once its model is loaded; the one that computes
# says "computing" and waits there for a line on stdin, so the test lets it finish only once both have asked.
WRITER = """
import sys
from fv.model.loading import load_model
from fv.parity.sides import src_with_origin
from fv.parity.src_cache import SrcCache
from fv.runtime.trials import load_trials
from tests.support.counting_source import PARAMS, Counting
src, model, trials, cache, log = sys.argv[1:6]
c = Counting(__import__("pathlib").Path(src), SrcCache(__import__("pathlib").Path(cache)))
inner = c.source.compute
def held(*a):
    open(log, "a").write("compute\\n")
    print("computing", flush=True)
    sys.stdin.readline()
    return inner(*a)
c.source.compute = held
lm, ft = load_model(model, "cpu", "float32"), load_trials(trials)
print("asking", flush=True)
print(src_with_origin(c.source, lm, ft, PARAMS)[2].split()[0])
"""


@pytest.mark.slow
def test_two_processes_at_once_compute_once(world):
    import queue
    import threading

    log = world["tmp"] / "log.txt"
    args = [str(world["src"]), str(world["model_dir"]), str(world["trials"].path), str(world["cache"].root), str(log)]
    root = REPO_ROOT
    env = {**__import__("os").environ, "PYTHONPATH": str(root)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=root, env=env) for _ in range(2)]
    for p in procs:  # both have loaded the model and asked; one computes and waits, the other waits for it
        assert p.stdout.readline().strip() == "asking"
    said: queue.Queue = queue.Queue()  # (process index, its next line), in the order they come
    for i, p in enumerate(procs):
        threading.Thread(target=lambda i=i, p=p: said.put((i, p.stdout.readline().strip())), daemon=True).start()
    first, line = said.get(timeout=300)
    assert line == "computing", line
    procs[first].stdin.write("go\n")
    procs[first].stdin.flush()
    other, other_line = said.get(timeout=300)  # the other one's answer, once the first has finished
    assert other != first
    rest = {i: p.communicate(timeout=300)[0] for i, p in enumerate(procs)}
    outs = sorted([rest[first].strip().splitlines()[-1], (other_line + rest[other]).strip().splitlines()[-1]])
    assert all(p.returncode == 0 for p in procs)
    assert outs == ["cache", "computed,"] and log.read_text().count("compute") == 1
