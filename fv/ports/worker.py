"""A port's process: the user's port object, loaded from their project root as they run it, answering stage calls.

This file imports nothing of the ``fv`` package (the standard library, torch and safetensors only): it is run by
path, ``python .../worker.py --root ROOT --object MODULE:OBJECT``, with ``ROOT`` (the user's project root) first
on ``sys.path`` and as the working folder, so a port package named ``fv`` is theirs, never this one. It answers
requests, one JSON object a line on stdin, with one JSON object a line on the stdout it was started with (the
port's own prints go to stderr, the log). Tensors travel in safetensors files in the folder the request names;
everything else is JSON.

Requests: ``{"op": "hello", "methods": [...]}`` (the port's name and which of those stage methods it has), ``{"op": "call", "method": M,
"args": {...}, "dir": D}`` (``port.M(**args)``; tensors in ``args`` and in the answer are ``{"__tensor__": key}``
entries of ``D/in.safetensors`` and ``D/out.safetensors``), ``{"op": "exit"}``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any


def encode(value: Any, tensors: dict, prefix: str = "t") -> Any:
    """``value`` with every tensor replaced by ``{"__tensor__": key}`` and put in ``tensors``."""
    import torch

    if isinstance(value, torch.Tensor):
        key = f"{prefix}{len(tensors)}"
        tensors[key] = value.detach().to("cpu").contiguous()
        return {"__tensor__": key}
    if isinstance(value, dict):
        return {str(k): encode(v, tensors, prefix) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v, tensors, prefix) for v in value]
    return value


def decode(value: Any, tensors: dict) -> Any:
    """``encode``'s inverse."""
    if isinstance(value, dict):
        if set(value) == {"__tensor__"}:
            return tensors[value["__tensor__"]]
        return {k: decode(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v, tensors) for v in value]
    return value


def save(path: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path))


def load(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path)) if path.is_file() else {}


def load_port(spec: str) -> Any:
    """``MODULE:OBJECT`` imported from the working folder's ``sys.path``; a class is instantiated without arguments."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"expected MODULE:OBJECT, found {spec!r}")
    obj = getattr(importlib.import_module(module), name)
    return obj() if isinstance(obj, type) else obj


def serve(port: Any, inp: Any, out: Any) -> None:
    for line in inp:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            if req["op"] == "exit":
                return
            if req["op"] == "hello":
                mod = sys.modules.get(type(port).__module__.split(".")[0])
                ans = {"ok": True, "name": getattr(port, "name", type(port).__name__),
                       "methods": [m for m in req.get("methods", []) if callable(getattr(port, m, None))],
                       "package_file": getattr(mod, "__file__", None), "python": sys.executable, "cwd": os.getcwd()}
            else:
                folder = Path(req["dir"])
                args = decode(req.get("args") or {}, load(folder / "in.safetensors"))
                result = getattr(port, req["method"])(**args)
                tensors: dict = {}
                ans = {"ok": True, "value": encode(result, tensors)}
                if tensors:
                    save(folder / "out.safetensors", tensors)
        except Exception as exc:  # noqa: BLE001  (every failure of the port goes back as one line)
            traceback.print_exc(file=sys.stderr)
            ans = {"ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__}
        out.write(json.dumps(ans) + "\n")
        out.flush()


def _launch() -> Any:
    """fv/launch.py loaded by its path (it imports nothing of fv, and neither does this process)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_fv_launch", Path(__file__).resolve().parents[1] / "launch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    ap = argparse.ArgumentParser(description="a port's process (fv.ports.functions)")
    ap.add_argument("--root", required=True)
    ap.add_argument("--object", required=True)
    a = ap.parse_args()
    root = str(Path(a.root).resolve())
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [root] + [p for p in sys.path if p not in ("", here, root)]
    os.chdir(root)
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # the port's own prints go to the log
    try:
        port = load_port(a.object)
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        out.write(json.dumps({"ok": False, "error": f"cannot load port {a.object} from {root}: {type(exc).__name__}: {exc}"}) + "\n")
        out.flush()
        return 1
    out.write(_launch().ready_line() + "\n")  # the handshake: protocol and this interpreter's libraries
    out.flush()
    serve(port, sys.stdin, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
