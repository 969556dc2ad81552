"""The reference side of the own mode in a process of its own, started as the reference's users start src.

``python fv/reference/worker.py --src-root SRC`` runs with the project root (the folder holding ``src/``) as its
working directory and, with ``src/``, first on its path, exactly as ``PYTHONPATH=. python src/...`` from that
root: the reference's own imports, globals, loader and ``MODEL_CONFIG``, and a package of the user's project
named ``fv`` wins over this one. Nothing of this package is imported there. Requests and answers are JSON lines;
tensors come back as safetensors files in a private folder. One process per (src, model, device) and pytest
worker, started on first use and kept for the session; its start and load times are recorded (``cost``).

A failure there comes back as one line naming the reference's file and function, with the last lines of the
process's log when it died.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fv import launch
from fv.errors import FVError

WORKER = Path(__file__).resolve().parent / "worker.py"
FV_CHECKOUT = Path(__file__).resolve().parents[2]  # the folder holding this package
LOG_TAIL = 8


class ReferenceProcessError(FVError):
    """The reference process failed or died; one line (with the log's last lines when it died)."""


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


@dataclass
class RemoteModel:
    """The reference's own copy of a model, held by a reference process: what its loader produced, read there.

    Stands where the adapter takes a model (``Reference`` dispatches to the process for it)."""

    spec: str  # the string the reference's loader was handed: what the user typed
    fv_path: Path  # the folder fv resolved for itself (weights hashed for the src-values cache)
    device: str
    process: "ReferenceProcess"
    reference_config: dict
    describe: dict
    load_seconds: float = 0.0

    @property
    def dtype(self) -> torch.dtype:
        return _dtype(self.describe["dtype"])

    @property
    def attn_implementation(self) -> str:
        return self.describe["attn_implementation"]

    @property
    def path(self) -> Path:
        return Path(self.spec)

    @property
    def name(self) -> str:
        from fv.model.tiny import tiny_name_of_folder

        return tiny_name_of_folder(self.fv_path.name) or Path(self.spec).name

    @property
    def prepend_bos(self) -> bool:
        return bool(self.describe["prepend_bos"])

    @property
    def quantized(self) -> dict:
        return self.describe.get("quantized_modules") or {}

    def request(self, op: str, **kw: Any) -> dict:
        return self.process.request(op, name=self.spec, device=self.device, **kw)

    # what fv reads of a model, for commands that hold only the reference's copy (``fv reference``)
    @property
    def info(self) -> Any:
        """The module tree's facts, from the config on the meta device (no weights in this process)."""
        if "_info" not in self.__dict__:
            from transformers import AutoConfig, AutoModelForCausalLM

            from fv.model.tree import inspect_model

            with torch.device("meta"):
                m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(self.fv_path)))
            self.__dict__["_info"] = inspect_model(m)
        return self.__dict__["_info"]

    @property
    def tokenizer(self) -> Any:
        if "_tok" not in self.__dict__:
            from fv.model.tokenizers import load_tokenizer

            self.__dict__["_tok"] = load_tokenizer(self.fv_path)
        return self.__dict__["_tok"]

    @property
    def config_hash(self) -> str:
        import hashlib

        return hashlib.sha256((self.fv_path / "config.json").read_bytes()).hexdigest()[:16]

    @property
    def loading_rule(self) -> str:
        q = f", 4-bit {len(self.quantized)} modules" if self.quantized else ""
        return f"the reference's own loader on {self.spec!r}, in its own process ({self.describe['dtype']}{q})"


@dataclass
class ReferenceProcess:
    """One running reference process (see the module docstring)."""

    src_root: Path
    baukit_root: str | None
    compat: bool
    proc: subprocess.Popen | None = None
    folder: Path | None = None
    log: Path | None = None
    cost: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    fv_modules: dict = field(default_factory=dict)
    python: str | None = None  # the interpreter it runs under (--src-python: the user's own); None: this one
    facts: dict = field(default_factory=dict)  # its interpreter and libraries, from the handshake (fv.launch)

    # -- life --------------------------------------------------------------------------------------------------
    def environment(self) -> dict:
        """The environment users give src: ``PYTHONPATH`` with the project root first, without fv's checkout
        (an installed fv stays installed; it only must not shadow the user's own ``fv``)."""
        env = dict(os.environ)
        keep = [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                if p and Path(p).resolve() != FV_CHECKOUT]
        env["PYTHONPATH"] = os.pathsep.join([str(self.src_root.parent), *keep])
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        for k in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_CURRENT_TEST"):
            env.pop(k, None)
        return env

    def start(self) -> "ReferenceProcess":
        t0 = time.perf_counter()
        self.folder = Path(tempfile.mkdtemp(prefix="fv-refproc-"))
        self.log = self.folder / "reference.log"
        args = ["--src-root", str(self.src_root), "--threads", str(torch.get_num_threads())]
        if self.baukit_root:
            args += ["--baukit-root", str(self.baukit_root)]
        if self.compat:
            args.append("--compat")
        with open(self.log, "wb") as log:
            self.proc = launch.start(self.python, WORKER, args, self.src_root.parent, self.environment(), log,
                                     f"the reference's process (src {self.src_root})")
        try:
            ready = self._read()
            if not ready.get("ok"):
                raise ReferenceProcessError(self._one_line(ready, "starting"))
            self.facts = launch.check_ready(ready, f"the reference's process (src {self.src_root})", self.python)
            hello = self.request("hello")
        except BaseException:
            self.close()  # never left running, nor its folder left behind
            raise
        self.notes, self.fv_modules = list(hello.get("notes", [])), hello.get("fv_modules", {})
        self.cost["start_seconds"] = time.perf_counter() - t0
        atexit.register(self.close)
        return self

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    # -- talking ---------------------------------------------------------------------------------------------
    def log_tail(self, n: int = LOG_TAIL) -> str:
        try:
            lines = [l for l in self.log.read_text(errors="replace").splitlines() if l.strip()]
        except (OSError, AttributeError):
            return ""
        return " | ".join(l.strip() for l in lines[-n:])

    def _one_line(self, ans: dict, doing: str) -> str:
        return (f"the reference side ({ans.get('where', '?')} in {self.src_root}) failed while {doing}: "
                f"{ans.get('error')}: {ans.get('message')}")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise ReferenceProcessError(f"the reference process ({WORKER.name}, src {self.src_root}) died with exit code "
                                        f"{code}; the last lines of its log {self.log}: {self.log_tail()}")
        return json.loads(line)

    def request(self, op: str, **kw: Any) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            raise ReferenceProcessError(f"the reference process for {self.src_root} is not running; the last lines of its log: {self.log_tail()}")
        self.proc.stdin.write(json.dumps({"op": op, "folder": str(self.folder), **kw}) + "\n")
        self.proc.stdin.flush()
        ans = self._read()
        if not ans.get("ok"):
            if op == "load" and ans.get("error") == "NotImplementedError":
                raise LoaderRefused(ans)
            raise ReferenceProcessError(self._one_line(ans, op if op != "load" else f"loading {kw.get('name')!r}"))
        return ans

    def tensors(self, name: str) -> dict:
        from safetensors.torch import load_file

        f = self.folder / name
        try:
            return load_file(str(f))
        finally:
            f.unlink(missing_ok=True)

    # -- models ----------------------------------------------------------------------------------------------
    def load(self, spec: str, fv_path: Path, device: str) -> RemoteModel:
        t0 = time.perf_counter()
        ans = self.request("load", name=spec, device=device)
        self.cost.setdefault("load_seconds", {})[spec] = time.perf_counter() - t0
        self.fv_modules = ans.get("fv_modules", self.fv_modules)
        return RemoteModel(spec=spec, fv_path=Path(fv_path), device=device, process=self, reference_config=ans["model_config"],
                           describe=ans["describe"], load_seconds=float(ans["load_seconds"]))


class LoaderRefused(ReferenceProcessError):
    """The reference's loader raised NotImplementedError: no branch matched the name."""

    def __init__(self, ans: dict):
        super().__init__(ans.get("message") or "")
        self.ans = ans


_PROCESSES: dict[tuple, ReferenceProcess] = {}


def reference_process(src_root: Path, baukit_root: str | None, compat: bool, model_key: str = "",
                      python: str | None = None) -> ReferenceProcess:
    """The session's reference process for this src, model and interpreter (``python``: the user's own, else this
    one), started on first use (one per pytest worker)."""
    key = (str(src_root), str(baukit_root), bool(compat), model_key, python)
    p = _PROCESSES.get(key)
    if p is None or p.proc is None or p.proc.poll() is not None:
        if p is not None:
            p.close()  # an ended process: its folder goes with it
        p = _PROCESSES[key] = ReferenceProcess(Path(src_root), baukit_root, compat, python=python).start()
    return p


def close_all() -> None:
    """End every reference process of this session and remove its folder (a pytest worker may leave without running
    ``atexit``)."""
    for p in list(_PROCESSES.values()):
        p.close()
    _PROCESSES.clear()


def session_costs() -> list[dict]:
    """The cost of every reference process of this session: its pid, start and load seconds."""
    return [{"src_root": k[0], "model": k[3], "pid": p.pid, **p.cost} for k, p in _PROCESSES.items()]
