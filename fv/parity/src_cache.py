"""A disk cache of the live reference's stage values, so a rerun of a gate computes only fv's side.

The reference side of a parity run depends only on what can change its numbers: the reference's files
(every file under its ``src/``, and the baukit it uses), the model it computes on (config, weights, dtype,
device, attention implementation), the fixed trials and the stage parameters, the torch and transformers
versions, and torch's CPU thread count (it changes the last bits). The key is all of those; a change to any one
is a different entry, never a stale hit.

An entry is a folder named by the key's sha256 holding ``values.safetensors`` (the tensor stages),
``values.json`` (the JSON stages and the injection error) and, written last, ``manifest.json`` with the key
and the sha256 of both files. Each file is written to a temp file and renamed into place. An entry is trusted
only when its manifest names this key and both files hash to what it says: a killed writer, a truncated or
edited file is recomputed, never read. One ``filelock`` per entry serializes writers (xdist workers, several
sessions); a process that finds the lock held waits and then reads what the holder wrote instead of
computing the same values again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from filelock import FileLock

from fv.io import atomic_write, ensure_dir, sha256_file, write_json
from fv.parity.stages import StageValues

CACHE_VERSION = 1  # bump when the entry layout or the key's meaning changes
TENSORS, VALUES, MANIFEST = "values.safetensors", "values.json", "manifest.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# fast/exact is how fv computes its own side; the reference computes the same values either way
FV_ONLY_PARAMS = ("mode",)


def default_cache_dir() -> Path:
    """``$FV_CACHE_DIR/src_values`` (the tiny models' cache root, ``~/.cache/fv`` when unset)."""
    from fv.model.tiny import cache_root

    return cache_root() / "src_values"


def _skip(path: Path) -> bool:
    # bytecode is written by importing the reference, so it would change the key after the first run
    return "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo")


def tree_digest(root: str | os.PathLike) -> str:
    """sha256 over every file under ``root`` (relative path and bytes, in sorted order), bytecode excluded."""
    root = Path(root)
    h = hashlib.sha256()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and not _skip(p.relative_to(root)))
    for p in files:
        rel = p.name if p == root else p.relative_to(root).as_posix()
        h.update(rel.encode() + b"\0" + sha256_file(p).encode() + b"\n")
    return h.hexdigest()


def file_digest_memo(path: Path, memo_dir: Path | None) -> str:
    """A weight file's sha256, remembered by (path, size, mtime) so an 8B model's files are read once."""
    st = path.stat()
    tag = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:32]
    memo = memo_dir / f"{tag}.sha256" if memo_dir is not None else None
    if memo is not None and memo.is_file():
        text = memo.read_text().strip()
        if len(text) == 64:
            return text
    digest = sha256_file(path)
    if memo is not None:
        atomic_write(memo, lambda fh: fh.write(digest + "\n"))
    return digest


def _tensor_digest(model: Any) -> str:
    """sha256 of every parameter and buffer (name, dtype, shape, bytes): a model with no files on disk."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


TENSOR_HASH_MAX_BYTES = 256 << 20  # below this the tensors in memory are hashed too: cheap, and catches edits in memory


def weights_digest(path: Path | None, model: Any, memo_dir: Path | None = None) -> str:
    """The weights: the model's tensors when it is small or has no weight files, else its files' hashes
    (remembered by size and time, so a large model's files are read once)."""
    files = sorted(p for p in Path(path).iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES) if path and Path(path).is_dir() else []
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if not files or size <= TENSOR_HASH_MAX_BYTES:
        return "tensors:" + _tensor_digest(model)
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}|{file_digest_memo(p, memo_dir)}\n".encode())
    return "files:" + h.hexdigest()


def device_kind(device: str) -> str:
    """The device as the numbers depend on it: its type and, for CUDA, the GPU's name (not its index)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(torch.device(device))}"
    return device.split(":")[0]


def model_key(lm: Any, memo_dir: Path | None = None) -> dict:
    """Everything of the model object a side computes on that can change its numbers."""
    model = lm.model
    cfg = model.config.to_dict()
    cfg.pop("_name_or_path", None)  # where the folder lies is not what it holds
    return {"config": json.loads(json.dumps(cfg, sort_keys=True, default=str)),
            "weights": weights_digest(getattr(lm, "path", None), model, memo_dir),
            "dtype": str(lm.dtype), "device": device_kind(str(lm.device)),
            "attn_implementation": str(getattr(model.config, "_attn_implementation", "") or getattr(lm, "attn_implementation", ""))}


def cache_key(source_parts: dict, trials: Any, params: Any) -> dict:
    """The whole key: the source's parts (its files, its model), the trials, the parameters and the versions."""
    import transformers

    p = {k: v for k, v in params.as_dict().items() if k not in FV_ONLY_PARAMS}
    # CPU kernels split their sums by thread: a value computed with 1 thread (an xdist worker) can differ in the
    # last bits from one computed with 2, and the exact gate compares bits
    return {"cache_version": CACHE_VERSION, "source": source_parts, "fixed_trials_sha256": trials.sha256,
            "n_trials": len(trials.subset(params.max_trials)), "params": p,
            "torch": torch.__version__, "transformers": transformers.__version__, "torch_threads": torch.get_num_threads()}


def key_digest(key: dict) -> str:
    """sha256 (hex) of a cache key, as sorted-key JSON."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


@dataclass
class SrcCache:
    """Stage values of one side on disk, one entry per key (see the module docstring)."""

    root: Path

    def entry(self, key: dict) -> Path:
        return Path(self.root) / key_digest(key)[:40]

    def read(self, key: dict) -> tuple[tuple[StageValues, str | None] | None, str]:
        """The entry's values and injection error, or None and why the entry cannot be trusted."""
        folder = self.entry(key)
        man_path = folder / MANIFEST
        if not man_path.is_file():
            return None, "no entry"
        try:
            man = json.loads(man_path.read_text(encoding="utf-8"))
            if man.get("key") != key:
                return None, "entry holds another key"
            for name in (TENSORS, VALUES):
                if sha256_file(folder / name) != man["files"][name]:
                    return None, f"{name} does not match its manifest"
            from safetensors.torch import load_file

            tensors = load_file(str(folder / TENSORS))
            doc = json.loads((folder / VALUES).read_text(encoding="utf-8"))
            values = {**doc["values"], **tensors}
            if set(values) != set(man["stages"]):
                return None, "entry lacks stages its manifest lists"
            return (StageValues(values={s: values[s] for s in man["stages"]},
                                durations={s: 0.0 for s in man["stages"]}), doc["injection_error"]), "read"
        except Exception as exc:  # any unreadable part means: recompute
            return None, f"unreadable entry ({type(exc).__name__}: {exc})"

    def write(self, key: dict, sv: StageValues, error: str | None) -> Path:
        """Write an entry: both value files first, the manifest that vouches for them last."""
        from safetensors.torch import save

        folder = ensure_dir(self.entry(key))
        (folder / MANIFEST).unlink(missing_ok=True)  # the old manifest must never vouch for new files
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in sv.values.items() if isinstance(v, torch.Tensor)}
        rest = {k: v for k, v in sv.values.items() if k not in tensors}
        blob = save(tensors)
        atomic_write(folder / TENSORS, lambda fh: fh.write(blob), binary=True)
        text = json.dumps({"values": rest, "injection_error": error, "computed_durations": sv.durations}, allow_nan=True)
        atomic_write(folder / VALUES, lambda fh: fh.write(text))
        write_json(folder / MANIFEST, {"key": key, "stages": list(sv.values),
                                       "files": {n: sha256_file(folder / n) for n in (TENSORS, VALUES)}})
        return folder

    def get_or_compute(self, key: dict, compute: Callable[[], tuple[StageValues, str | None]]
                       ) -> tuple[StageValues, str | None, str]:
        """The values from the entry when it can be trusted, else computed and stored; and where they came from."""
        ensure_dir(self.root)
        folder = self.entry(key)
        with FileLock(str(folder) + ".lock"):
            hit, why = self.read(key)
            if hit is not None:
                return hit[0], hit[1], f"cache {folder}"
            sv, error = compute()
            self.write(key, sv, error)
        note = "" if why == "no entry" else f"; the old entry was not trusted: {why}"
        return sv, error, f"computed, stored in {folder}{note}"
