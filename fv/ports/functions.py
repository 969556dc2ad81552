"""A port by its functions: a user's runtime, loaded by ``MODULE:OBJECT`` from their project root in a process of its
own, as one side of a comparison (the protocol of ``fv.parity.sides``).

The port protocol: one method per stage, each optional (a stage the port lacks is not compared, never a PASS).
Plain data only (str, int, float, lists, dicts, torch tensors); ``trials`` is the fixed-trials file's dict
(``{"meta", "trials"}``, fv's schema: docs/reference.md) cut to the trials compared, ``keys`` their keys
``"<trial_id>:<trial_idx>"`` in order, ``params`` ``{"n_top_heads", "edit_layer", "max_trials",
"token_class_idx", "mode"}``:

``load(model, device, dtype) -> dict``
    Load the model from the string the user typed; return facts for the report (``dtype``, ...).
``prompt(trials, keys, params) -> {key: {"clean_prompt_str", "corrupted_prompt_str", "clean_input_ids",
"corrupted_input_ids", "target_str", "answer_ids"}}``
``slot(trials, keys, params) -> {"dummy_labels": [[position, label]], "trials": {key: {"clean": ..., "corrupted": ...}}}``
``mean_activations(trials, keys, params) -> (layers, heads, slots, head_dim) float32``
    Each head's mean output (the input of the attention output projection, per head) over the clean prompts, per slot.
``indirect_effect(trials, keys, params, mean_activations) -> (trials, layers, heads) float32``
    Per corrupted prompt and head: the target's first-token probability with the head's output at the last token
    replaced by its mean at the last slot, minus without.
``top_heads(params, indirect_effect) -> [[layer, head, score]]``
    The ``n_top_heads`` heads with the largest trial-mean indirect effect, score rounded to 4 decimals.
``fv(params, mean_activations, top_heads) -> (d_model,) float32``
    The sum over the top heads of the output projection of the head's last-slot mean.
``injection(trials, keys, params, fv) -> {key: {"zero_shot": score, "shuffled": score}}``
    The FV added at ``edit_layer``; ``score`` = ``{"target_id", "base": {...}, "with": {...}}`` (docs/reference.md).

**Isolated** (the default for a user's port): each stage is handed the other side's inputs (the reference's mean
activations for its indirect effects, ...), so a FAIL is that stage's own. **Chained**: the port's own outputs, as
it runs end to end; the first divergence is then where it starts.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fv import launch
from fv.errors import FVError
from fv.parity.registry import STAGES
from fv.ports import worker as wire

WORKER = Path(wire.__file__)
# what a stage method takes from upstream stages besides the trials and parameters; every stage of the registry,
# in data-flow order
NEEDS = {"indirect_effect": ("mean_activations",), "top_heads": ("indirect_effect",), "fv": ("mean_activations", "top_heads"),
         "injection": ("fv",)}
INPUTS = {s: NEEDS.get(s, ()) for s in STAGES}
TAKES_TRIALS = tuple(s for s in STAGES if s not in ("top_heads", "fv"))


class PortProcess:
    """The port's process: ``worker.py`` run by ``python`` (the user's interpreter when given) from ``root``."""

    def __init__(self, spec: str, root: str | Path, python: str | None = None):
        self.spec, self.root, self.python = spec, Path(root).resolve(), python or sys.executable
        self.log = tempfile.NamedTemporaryFile(prefix="fv-port-", suffix=".log", delete=False)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONPATH"] = str(self.root)
        self.proc = launch.start(self.python, WORKER, ["--root", str(self.root), "--object", spec], self.root, env,
                                 self.log, f"port {spec}")
        atexit.register(self.close)  # never left running, whatever ends this process
        self.keep_log = False  # the log is removed on close unless something failed
        first = self._read("loading it")
        if not first.get("ok"):
            self.keep_log = True
            self.close()
            raise FVError(f"port {spec}: {first.get('error')} (log {self.log.name})")
        try:
            self.facts = launch.check_ready(first, f"port {spec}", self.python)
        except FVError:
            self.close()
            raise
        self.hello = self.request({"op": "hello", "methods": ["load", *STAGES]}, "greeting it")

    def _read(self, doing: str) -> dict:
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            self.keep_log = True
            raise FVError(f"port {self.spec}: its process ended while {doing} (exit {self.proc.poll()}); log {self.log.name}: "
                          + self.log_tail())
        return json.loads(line)

    def log_tail(self, n: int = 800) -> str:
        try:
            return Path(self.log.name).read_text(errors="replace")[-n:].strip().replace("\n", " | ")
        except OSError:
            return ""

    def request(self, req: dict, doing: str) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        ans = self._read(doing)
        if not ans.get("ok"):
            self.keep_log = True
            raise FVError(f"port {self.spec}: {doing}: {ans.get('error')} (log {self.log.name})")
        return ans

    def call(self, method: str, **args: Any) -> Any:
        """``port.method(**args)`` in its process; tensors both ways in safetensors files."""
        with tempfile.TemporaryDirectory(prefix="fv-port-call-") as d:
            tensors: dict = {}
            enc = wire.encode(args, tensors)
            if tensors:
                wire.save(Path(d) / "in.safetensors", tensors)
            ans = self.request({"op": "call", "method": method, "args": enc, "dir": d}, f"{method}()")
            return wire.decode(ans.get("value"), wire.load(Path(d) / "out.safetensors"))

    def close(self) -> None:
        """End the port's process (asked to exit, killed after 30 s); its log is removed unless something failed."""
        if self.log.closed and self.proc.poll() is not None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")  # type: ignore[union-attr]
                self.proc.stdin.flush()  # type: ignore[union-attr]
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        self.log.close()
        if not self.keep_log:
            Path(self.log.name).unlink(missing_ok=True)


@dataclass
class PortSide:
    """A port by its functions as a side: ``isolated`` (each stage fed the other side's inputs) or chained."""

    process: PortProcess
    model: str
    device: str = "cpu"
    dtype: str = "float32"
    isolated: bool = True
    exact: bool = True  # a live side: the exact gate (in exact mode); False: the compute dtype's tolerance
    takes_given: bool = True
    _loaded: dict | None = field(default=None, init=False)

    @property
    def methods(self) -> list[str]:
        return list(self.process.hello["methods"])

    def _load(self) -> dict:
        if self._loaded is None:
            self._loaded = (self.process.call("load", model=self.model, device=self.device, dtype=self.dtype) or {}) \
                if "load" in self.methods else {}
        return self._loaded

    def describe(self, trials: dict, params: dict) -> dict:
        facts = self._load()
        h = self.process.hello
        missing = [s for s in INPUTS if s not in self.methods]
        mode = "isolated" if self.isolated else "chained"
        notes = [f"port {h['name']} ({self.process.spec}) from {self.process.root}, python {h['python']}, {mode}"]
        notes += [f"not compared: {s}: the port has no {s}() method" for s in missing]
        return {"kind": f"port {h['name']}", "live": self.exact, "dtype": facts.get("dtype"), "compat": False,
                "description": f"the port {h['name']} ({self.process.spec}, root {self.process.root}, {mode})",
                "notes": notes, "facts": {"port": h["name"], "port_object": self.process.spec, "port_root": str(self.process.root),
                                          "port_python": h["python"], "port_mode": mode, "port_package_file": h.get("package_file"),
                                          "port_environment": self.process.facts}}

    def stage_values(self, trials: dict, params: dict, given: dict | None = None) -> dict:
        """The stages the port has, in data-flow order; in isolated mode each fed ``given`` (the other side's values;
        a stage whose inputs the other side lacks is left out)."""
        self._load()
        from fv.parity.sides import fixed_trials_of
        from fv.parity.stages import trial_key

        n = params.get("max_trials")
        file = {**trials["file"], "trials": trials["file"]["trials"][:n] if n else trials["file"]["trials"]}
        keys = [trial_key(t) for t in fixed_trials_of(trials).subset(n)]
        values, durations = {}, {}
        for stage, needs in INPUTS.items():
            if stage not in self.methods:
                continue
            source = (given or {}) if self.isolated else values
            if any(x not in source for x in needs):
                continue
            args = {x: source[x] for x in needs}
            if stage in TAKES_TRIALS:
                args.update(trials=file, keys=keys)
            t0 = time.perf_counter()
            values[stage] = self.process.call(stage, params=dict(params), **args)
            durations[stage] = time.perf_counter() - t0
        return {"values": values, "durations": durations, "injection_error": None,
                "origin": f"computed by the port ({'isolated' if self.isolated else 'chained'})"}


def port_side(spec: str, root: str | Path, model: str, python: str | None = None, device: str = "cpu",
              dtype: str = "float32", isolated: bool = True, exact: bool = True) -> PortSide:
    """Start the port ``spec`` (``MODULE:OBJECT``) from ``root`` and wrap it as a side. Raises ``FVError`` in one
    line when it cannot be started or loaded."""
    return PortSide(PortProcess(spec, root, python), model, device, dtype, isolated, exact)
