"""The identity of the model and inputs a set of goldens was made with, so goldens of another model are refused.

Goldens made with one model and replayed on another of the same shape (a checkpoint sweep, another seed) would
fail at every element, and the report would blame fv's mean activations. Every golden's meta therefore carries
``identity`` (``golden_identity``), and every way goldens come in (the committed snapshots, ``--golden-dir``,
``fv golden import``) compares it with the session's model and trials before any stage (``identity_problem``),
refusing in one line.

The identity holds digests of what changes the computation only:

- ``config_sha256``: the model's ``config.json`` without what does not change the numbers: where the folder lay
  (``_name_or_path``), which transformers wrote it (``transformers_version``), runtime switches (``use_cache``,
  the attention implementation, output flags), the init scale (``initializer_range``) and keys set to null; the
  dtype key as either release spells it (``torch_dtype`` in 4.x, ``dtype`` in 5.x) and the rope settings as either
  spells them (``rope_theta``/``rope_scaling`` in 4.x, ``rope_parameters`` in 5.x) are read as one, as are the
  other keys one release writes and the other does not (``fv.compat.release_neutral_config``).
- ``weights_sha256``: every tensor's name, dtype, shape and bytes, in name order, whatever files hold them
  (one safetensors file or shards, or ``pytorch_model*.bin``): a per-tensor digest, so the file layout and
  header order do not count. Per-file results are remembered by (path, size, mtime) under the fv cache, so a large
  model's files are read once.
- ``revision``: the commit of a Hugging Face cache snapshot, where the model came from one (else null).
- ``n_trials``, ``n_shots``, ``template_sha256`` (prefixes and separators) and ``trials_sha256``: a digest of what
  the stages see of each trial (its key, clean and corrupted prompts, target and answer ids), so reformatting a
  trials file does not change it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fv import compat

IDENTITY_VERSION = 1
# config keys that never change a forward pass's numbers (or that each transformers release writes its own way)
NOT_COMPUTATION = frozenset({
    "transformers_version", "_name_or_path", "name_or_path", "_commit_hash", "use_cache", "output_attentions",
    "output_hidden_states", "return_dict", "torchscript", "_attn_implementation", "attn_implementation",
    "_attn_implementation_autoset", "_attn_implementation_internal", "initializer_range", "chunk_size_feed_forward",
})
_TORCH_TO_ST = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64", "int32": "I32",
                "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL", "float8_e4m3fn": "F8_E4M3",
                "float8_e5m2": "F8_E5M2"}
NOT_RECORDED = "identity not recorded"
_CHUNK = 64 << 20


def short(digest: str | None) -> str:
    """A digest's first 12 characters, ``?`` when there is none."""
    return (digest or "?")[:12]


# ---- the config --------------------------------------------------------------------------------------------
def normalize_config(cfg: dict) -> dict:
    """The config's fields that change the computation, in one spelling for transformers 4.x and 5.x."""
    out: dict = {}
    for k, v in cfg.items():
        if k in NOT_COMPUTATION or v is None:
            continue
        if isinstance(v, dict) and k.endswith("_config") and k != "quantization_config":
            v = normalize_config(v)  # text_config, vision_config of a multimodal wrapper
        out[k] = v
    # the dtype key (4.x: torch_dtype; 5.x: dtype), the rope keys (4.x: rope_theta, rope_scaling; 5.x:
    # rope_parameters) and the other spellings of one release or the other, in 5.x's: fv.compat, the one place for
    # differences between releases
    return compat.release_neutral_config(out)


def config_digest(config: dict | str | os.PathLike) -> str:
    """sha256 of the normalized config (a dict, or the path of a config.json or of its folder)."""
    if not isinstance(config, dict):
        p = Path(config)
        config = json.loads((p / "config.json" if p.is_dir() else p).read_text(encoding="utf-8"))
    return hashlib.sha256(json.dumps(normalize_config(config), sort_keys=True).encode()).hexdigest()


# ---- the weights -------------------------------------------------------------------------------------------
def _tensor_line(name: str, dtype: str, shape: Iterable[int], data: bytes | memoryview) -> str:
    return f"{name}|{dtype}|{list(shape)}|{hashlib.sha256(data).hexdigest()}"


def _safetensors_lines(path: Path) -> list[str]:
    import mmap

    with open(path, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(n))
        base = 8 + n
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            lines = []
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                a, b = info["data_offsets"]
                h = hashlib.sha256()
                for start in range(base + a, base + b, _CHUNK):  # in chunks: an embedding of a large vocabulary is ~1 GB
                    h.update(mm[start: min(start + _CHUNK, base + b)])
                lines.append(f"{name}|{info['dtype']}|{list(info['shape'])}|{h.hexdigest()}")
    return lines


def _state_lines(state: dict) -> list[str]:
    import torch

    lines = []
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().to("cpu").contiguous()
        dt = _TORCH_TO_ST.get(str(t.dtype).replace("torch.", ""), str(t.dtype))
        lines.append(_tensor_line(name, dt, t.shape, t.view(torch.uint8).numpy().tobytes() if t.numel() else b""))
    return lines


def _bin_lines(path: Path) -> list[str]:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return _state_lines(state.get("state_dict", state) if isinstance(state, dict) else {})


def _memo_dir() -> Path:
    from fv.model.tiny import cache_root

    return cache_root() / "identity"


def _file_lines(path: Path) -> list[str]:
    """A weight file's per-tensor lines, remembered by (path, size, mtime)."""
    st = path.stat()
    tag = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{IDENTITY_VERSION}".encode()).hexdigest()[:32]
    memo = _memo_dir() / f"{tag}.json"
    try:
        return list(json.loads(memo.read_text()))
    except (OSError, ValueError):
        pass
    lines = _safetensors_lines(path) if path.suffix == ".safetensors" else _bin_lines(path)
    try:
        from fv.io import atomic_write

        atomic_write(memo, lambda fh: fh.write(json.dumps(lines)))
    except OSError:
        pass
    return lines


def weight_files(folder: Path) -> list[Path]:
    """The model's weight files: safetensors when there are any, else pytorch ``.bin`` files; an index's shards only."""
    folder = Path(folder)
    for suffix, index in ((".safetensors", "model.safetensors.index.json"), (".bin", "pytorch_model.bin.index.json")):
        if (folder / index).is_file():
            shards = sorted(set(json.loads((folder / index).read_text()).get("weight_map", {}).values()))
            return [folder / s for s in shards]
        files = sorted(p for p in folder.glob(f"*{suffix}") if p.is_file())
        if files:
            return files
    return []


def weights_digest(folder: str | os.PathLike | None = None, model: Any = None) -> str:
    """sha256 over every tensor's (name, dtype, shape, sha256 of its bytes), in name order: the same for one
    safetensors file or shards, and for the same tensors in a ``.bin``. Without weight files, the model's state dict."""
    files = weight_files(Path(folder)) if folder is not None and Path(folder).is_dir() else []
    if files:
        lines = [line for f in files for line in _file_lines(f)]
    elif model is not None:
        lines = _state_lines(model.state_dict())
    else:
        raise FileNotFoundError(f"no weight files in {folder}")
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def revision_of(folder: str | os.PathLike | None) -> str | None:
    """The commit of a Hugging Face cache snapshot folder (``.../models--ORG--NAME/snapshots/<commit>``), else None."""
    if folder is None:
        return None
    p = Path(folder)
    if p.parent.name == "snapshots" and p.parent.parent.name.startswith("models--"):
        return p.name
    return None


def model_identity(lm: Any = None, folder: str | os.PathLike | None = None, name: str | None = None) -> dict:
    """The model part of an identity, from a loaded model (``fv.model.loading.LoadedModel``) or a model folder."""
    folder = Path(folder) if folder is not None else Path(lm.path)
    model = getattr(lm, "model", None)
    cfg = folder / "config.json"
    if cfg.is_file():
        c = config_digest(cfg)
    else:
        c = config_digest(model.config.to_dict())
    return {"version": IDENTITY_VERSION, "model": name or getattr(lm, "name", None) or folder.name,
            "config_sha256": c, "weights_sha256": weights_digest(folder, model), "revision": revision_of(folder)}


# ---- the trials --------------------------------------------------------------------------------------------
def template_digest(prefixes: dict | None, separators: dict | None) -> str:
    """sha256 (hex) of the prompt template: the prefixes and separators, the defaults where none are given."""
    from fv.runtime.prompts import DEFAULT_PREFIXES, DEFAULT_SEPARATORS

    t = {"prefixes": dict(prefixes or DEFAULT_PREFIXES), "separators": dict(separators or DEFAULT_SEPARATORS)}
    return hashlib.sha256(json.dumps(t, sort_keys=True).encode()).hexdigest()


def trials_digest(entries: dict) -> str:
    """``entries``: trial key -> anything holding ``clean_prompt_str``, ``corrupted_prompt_str``, ``target_str`` and
    ``answer_ids`` (the prompt golden's form)."""
    rows = {k: {f: (list(map(int, e[f])) if f == "answer_ids" else e[f])
                for f in ("clean_prompt_str", "corrupted_prompt_str", "target_str", "answer_ids")}
            for k, e in entries.items()}
    return hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def trials_identity(trials: Any, subset: Sequence[Any] | None = None) -> dict:
    """The inputs part of an identity: ``trials`` a ``FixedTrials``, ``subset`` the trials the goldens cover."""
    from fv.parity.stages import trial_key

    subset = list(subset if subset is not None else trials.trials)
    entries = {trial_key(t): {"clean_prompt_str": t.clean_prompt_str, "corrupted_prompt_str": t.corrupted_prompt_str,
                              "target_str": t.target_str, "answer_ids": t.answer_ids} for t in subset}
    return {"n_trials": len(subset), "n_shots": len(subset[0].prompt_data_clean["examples"]) if subset else 0,
            "template_sha256": template_digest(trials.meta.get("prefixes"), trials.meta.get("separators")),
            "trials_sha256": trials_digest(entries), "trials_id": trials.id}


def golden_identity(lm: Any, trials: Any, subset: Sequence[Any] | None = None) -> dict:
    """What a golden's meta records as ``identity``: the model and the inputs."""
    return {**model_identity(lm), **trials_identity(trials, subset)}


# ---- the check ---------------------------------------------------------------------------------------------
def identity_problem(recorded: dict | None, current: dict, where: str, regenerate: str) -> str | None:
    """One line refusing goldens of another model (or other trials), or None when they agree or nothing was
    recorded (the caller notes ``NOT_RECORDED``). Only the fields both sides hold are compared."""
    if not recorded:
        return None
    model_keys = [k for k in ("weights_sha256", "config_sha256", "revision") if recorded.get(k) and current.get(k)]
    differ = [k for k in model_keys if recorded[k] != current[k]]
    if differ:
        words = {"weights_sha256": "weights digest", "config_sha256": "config digest", "revision": "revision"}
        theirs = ", ".join(f"{words[k]} {short(recorded[k])}" for k in differ)
        ours = ", ".join(f"{words[k]} {short(current[k])}" for k in differ)
        return (f"goldens of another model: {where} were made with {recorded.get('model') or 'a model'} ({theirs}), "
                f"this model {current.get('model') or ''} has {ours}; the stages would differ everywhere and say "
                f"nothing about fv. Regenerate with {regenerate}")
    if recorded.get("trials_sha256") and current.get("trials_sha256") and recorded["trials_sha256"] != current["trials_sha256"]:
        extra = []
        for k, w in (("n_shots", "shots"), ("n_trials", "trials"), ("template_sha256", "template")):
            if k in recorded and k in current and recorded[k] != current[k]:
                extra.append(f"{w} {short(str(recorded[k]))} vs {short(str(current[k]))}")
        return (f"goldens of other trials: {where} were made from trials digest {short(recorded['trials_sha256'])}"
                f"{' (' + ', '.join(extra) + ')' if extra else ''}, these trials ({current.get('trials_id', '')}) have "
                f"{short(current['trials_sha256'])}. Regenerate with {regenerate}")
    return None


def not_recorded_note(where: str, what: str = "") -> str:
    """The note for an identity that was not recorded at ``where``: only shapes were checked against the model."""
    return f"{NOT_RECORDED}: {where}{' ' + what if what else ''}; only shapes were checked against the model"
