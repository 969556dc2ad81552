"""Golden files: the reference's stage values, stored so CI can compare fv with them without the reference.

One folder per model, fixed-trials id and trial count (``snapshots/<model>/<trials id>/t<n>/``), one file per
artifact: tensors as safetensors (bytes that do not depend on pickling), the rest as JSON. The syrupy
extension in ``fv.parity.snapshot`` writes and compares these files inside pytest; this module reads them directly,
so the parity engine can use them wherever the reference is absent. Each folder's meta (``t<n>.meta.json``) records
the identity of the model and trials it was made with (``fv.parity.identity``); ``check_identity`` refuses goldens of
another model before any stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fv.parity.registry import GOLDEN_ARTIFACTS
from fv.parity.stages import StageValues

# GOLDEN_ARTIFACTS (artifact name -> (kind, the stage it belongs to)) comes from fv.parity.registry
EXTENSIONS = {"json": "json", "tensor": "safetensors"}


# what decides a CPU result's last bits besides the code (docs/tolerances.md, "What differs between CPUs")
NUMERIC_ENV = ("ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA",
               "DNNL_MAX_CPU_ISA")


def numerics() -> dict:
    """The numeric set-up a golden was written under, recorded in its meta: torch's CPU kernel capability (what
    ``ATEN_CPU_CAPABILITY`` picked), its intra-op thread count, the BLAS/oneDNN builds and the variables that steer
    them, the CPU model and the library versions (torch, transformers, numpy)."""
    import os
    import platform

    import numpy
    import torch
    import transformers

    cpu = ""
    try:
        cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                    if l.startswith("model name")), "")
    except OSError:
        pass
    cfg = torch.__config__.show()
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_num_threads": torch.get_num_threads(),
        "env": {k: os.environ.get(k) for k in NUMERIC_ENV},
        "cpu_model": cpu or platform.processor(),
        "machine": platform.machine(),
        "torch_version": torch.__version__, "transformers_version": transformers.__version__,
        "numpy_version": numpy.__version__,
        "blas": next((l.strip(" -") for l in cfg.splitlines() if "Math Kernel Library" in l or "OpenBLAS" in l), ""),
        "onednn": next((l.strip(" -") for l in cfg.splitlines() if "MKL-DNN" in l or "oneDNN" in l), ""),
    }


def golden_dir(root: Path, model: str, trials_id: str, n_trials: int) -> Path:
    """The golden folder for a model, fixed-trials id and trial count: ``<root>/<model>/<trials id>/t<n>``."""
    return Path(root) / model / trials_id / f"t{n_trials}"


def artifact_value(sv: StageValues, name: str) -> Any:
    """The value a golden artifact holds, taken from a side's stage values."""
    if name == "dummy_labels":
        return sv.values["slot"]["dummy_labels"]
    if name == "slot":
        return sv.values["slot"]["trials"]
    return sv.values[GOLDEN_ARTIFACTS[name][1]]


def serialize(kind: str, value: Any) -> bytes:
    """A golden artifact's bytes: a ``tensor`` as safetensors (under ``value``, on the CPU, contiguous),
    anything else as indented UTF-8 JSON with a trailing newline.
    """
    if kind == "tensor":
        from safetensors.torch import save

        return save({"value": value.detach().to("cpu").contiguous()})
    return (json.dumps(value, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def deserialize(kind: str, data: bytes | str) -> Any:
    """The value held by a golden artifact's bytes (or text), the inverse of ``serialize``."""
    if kind == "tensor":
        from safetensors.torch import load

        return load(bytes(data))["value"]
    if isinstance(data, bytes):
        data = data.decode("utf-8")
    return json.loads(data)


def load_goldens(folder: Path) -> StageValues | None:
    """Stage values from a golden folder, or None when it holds none. A folder imported from a user's goldens
    (``fv golden import``) holds only some artifacts: the stages it lacks are left out and not compared."""
    vals: dict[str, Any] = {}
    for name, (kind, _stage) in GOLDEN_ARTIFACTS.items():
        f = Path(folder) / f"{name}.{EXTENSIONS[kind]}"
        if f.is_file():
            vals[name] = deserialize(kind, f.read_bytes())
    if not vals:
        return None
    sv = StageValues()
    if "dummy_labels" in vals:
        sv.values["slot"] = {"dummy_labels": vals["dummy_labels"], **({"trials": vals["slot"]} if "slot" in vals else {})}
    for name in ("prompt", "mean_activations", "indirect_effect", "top_heads", "fv", "injection"):
        if name in vals:
            sv.values[GOLDEN_ARTIFACTS[name][1]] = vals[name]
    return sv


def to_jsonable(value: Any) -> Any:
    """Round-trip through JSON so a live value compares like its golden (tuples become lists)."""
    return json.loads(json.dumps(value))


REGENERATE = ("`pytest -m m1 --snapshot-update --src-root <reference src>` on this model and trials (or `fv golden import "
              "DIR --force` for a user's goldens)")


def meta_path(folder: Path) -> Path:
    """The meta (provenance) file beside a golden folder ``.../t<n>/``: ``.../t<n>.meta.json``."""
    return Path(folder).parent / f"{Path(folder).name}.meta.json"


def check_identity(folder: Path, lm: Any, trials: Any, subset: Any = None) -> list[str]:
    """Refuse, in one line and before any stage, goldens whose meta records another model's identity (or other
    trials'); returns the notes for the report ("identity not recorded" for goldens written before identities).
    ``fv.parity.identity`` says what the identity holds."""
    from fv.errors import FVError
    from fv.parity.identity import golden_identity, identity_problem, not_recorded_note

    mp = meta_path(folder)
    meta = json.loads(mp.read_text(encoding="utf-8")) if mp.is_file() else {}
    recorded = meta.get("identity")
    if not recorded:
        return [not_recorded_note(f"the goldens in {folder}", "(their meta predates identities)")]
    problem = identity_problem(recorded, golden_identity(lm, trials, subset), f"the goldens in {folder}",
                               f"`fv golden import {meta['imported_from']} --force` on this model" if meta.get("imported_from")
                               else REGENERATE)
    if problem:
        raise FVError(problem)
    how = recorded.get("recorded_by")
    return [f"goldens' identity checked: weights digest {recorded.get('weights_sha256', '')[:12]}, config digest "
            f"{recorded.get('config_sha256', '')[:12]}{', ' + how if how else ''}"]
