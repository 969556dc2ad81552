"""fv's own run folder (``fv runtime run --out DIR``) read as a side: the layout reader of fv's layout
(``fv.ports.layouts``), so a run made earlier, on another machine or by another fv, is gated like any port's files.

What the folder holds (fv.pipelines.run, fv.parity.dump): ``mean_activations.pt`` (layers, heads, slots, head_dim)
with ``mean_activations_meta.json`` (the fixed-trials file's path and sha256, the dummy labels; the run's trials
are the file's first ``len(trial_keys)``), ``indirect_effect.pt``
(trials, layers, heads) with its meta (``trial_keys``), ``top_heads.json`` (``[[layer, head, score]]``),
``fv_global_resid.pt`` (d_model,), and ``fv_runtime_dump.json`` (per trial: prompt strings, token ids, answer ids,
slot maps; the injection's logit, log-prob and argmax).

Stages held: ``mean_activations``, ``indirect_effect``, ``top_heads``, ``fv``, and ``prompt`` and ``slot`` from the dump.
Not held: ``injection`` (the dump keeps the logit, log-prob and argmax of each prompt, not the stage's probabilities,
top tokens and logits hash; ``fv parity diff`` compares the dump trial by trial).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from fv.errors import FVError
from fv.io import load_tensor_file, read_json

NAME = "fv"
DESCRIPTION = "fv's own run folder (fv runtime run --out DIR: mean_activations.pt, indirect_effect.pt, fv_runtime_dump.json)"
FILES = ("mean_activations.pt", "mean_activations_meta.json", "indirect_effect.pt", "indirect_effect_meta.json")


def looks_like(folder: str | Path) -> bool:
    return all((Path(folder) / f).is_file() for f in FILES)


def side(folder: str | Path) -> "FvFilesSide":
    return FvFilesSide(Path(folder))


def fixed_trials(folder: str | Path, tokenizer: Any = None, relation_csv: Any = None) -> dict:
    """The fixed-trials file the run recorded (``mean_activations_meta.json``: path and sha256), read and checked
    against that sha256. ``FVError`` when it is gone or changed: pass the file with --fixed-trials."""
    meta = read_json(Path(folder) / "mean_activations_meta.json", "fv run meta")
    path, sha = meta.get("fixed_trials_path"), meta.get("fixed_trials_sha256")
    if not path or not Path(path).is_file():
        raise FVError(f"fv run {folder}: the fixed-trials file it recorded ({path}) is not here; pass it with --fixed-trials")
    data = Path(path).read_bytes()
    if sha and hashlib.sha256(data).hexdigest() != sha:
        raise FVError(f"fv run {folder}: {path} changed since the run (sha256 differs from the run's meta); pass the "
                      "file the run used with --fixed-trials")
    import json

    raw = json.loads(data.decode("utf-8"))
    ran = read_json(Path(folder) / "indirect_effect_meta.json", "fv run meta").get("trial_keys") or []
    raw["trials"] = raw["trials"][:len(ran)]  # the run's --max-trials: its numbers average these
    return raw


class FvFilesSide:
    """An fv run folder as a side (not live: values made earlier)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def _keys(self, trials: dict, params: dict) -> list[str]:
        given = trials["file"]["trials"]
        n = params.get("max_trials")
        given = given[:n] if n else given
        return [f"{t.get('trial_id', i)}:{i}" for i, t in enumerate(given)]

    def _check(self, trials: dict, params: dict) -> dict:
        meta = read_json(self.folder / "mean_activations_meta.json", "fv run meta")
        ie_meta = read_json(self.folder / "indirect_effect_meta.json", "fv run meta")
        theirs = [f"{k[0]}:{k[1]}" for k in ie_meta.get("trial_keys") or []]
        ours = self._keys(trials, params)
        if theirs != ours:
            raise FVError(f"fv run {self.folder}: it ran trials {theirs[:3]}... ({len(theirs)}), {len(ours)} are compared "
                          f"here ({ours[:3]}...); compare it on the trials it ran (fv.ports.fv_layout.fixed_trials)")
        dump_path = self.folder / "fv_runtime_dump.json"
        if dump_path.is_file():  # the same trials, not only the same keys: their clean prompts as the run rendered them
            given = trials["file"]["trials"]
            for t, d in zip(given, read_json(dump_path, "fv run dump")["trials"]):
                if t.get("clean_prompt_str") not in (None, d["clean_prompt_str"]):
                    raise FVError(f"fv run {self.folder}: trial ({d['trial_id']}, {d['trial_idx']}) ran on another "
                                  f"prompt than {trials.get('path')} holds")
        return meta

    def describe(self, trials: dict, params: dict) -> dict:
        meta = self._check(trials, params)
        notes = [f"fv run folder {self.folder}",
                 "not compared: injection: the run's dump keeps each prompt's logit, log-prob and argmax only (not the "
                 "stage's probability, top tokens and logits hash); `fv parity diff` compares it trial by trial"]
        heads = read_json(self.folder / "top_heads.json", "top heads") if (self.folder / "top_heads.json").is_file() else None
        if heads is not None and len(heads) != int(params.get("n_top_heads", 10)):
            notes.append(f"not compared: top_heads, fv: the run kept {len(heads)} heads, n_top_heads is {params.get('n_top_heads')}")
        return {"kind": "fv files", "description": f"fv run folder {self.folder}", "live": False,
                "dtype": meta.get("dtype"), "notes": notes, "compat": False,
                "facts": {"port": "fv files", "port_folder": str(self.folder)}}

    def stage_values(self, trials: dict, params: dict) -> dict:
        from fv.parity.stages import prompt_entry

        self._check(trials, params)
        values: dict = {"mean_activations": load_tensor_file(self.folder / "mean_activations.pt").float(),
                        "indirect_effect": load_tensor_file(self.folder / "indirect_effect.pt").float()}
        if (self.folder / "top_heads.json").is_file():
            heads = read_json(self.folder / "top_heads.json", "top heads")
            if len(heads) == int(params.get("n_top_heads", 10)):
                values["top_heads"] = heads
                if (self.folder / "fv_global_resid.pt").is_file():
                    values["fv"] = load_tensor_file(self.folder / "fv_global_resid.pt").float().reshape(-1)
        dump_path = self.folder / "fv_runtime_dump.json"
        if dump_path.is_file():
            dump = read_json(dump_path, "fv run dump")
            given = {k: t for k, t in zip(self._keys(trials, params), trials["file"]["trials"])}
            prompt, slots = {}, {}
            for t in dump["trials"]:
                key = f"{t['trial_id']}:{t['trial_idx']}"
                if key not in given:
                    continue
                prompt[key] = prompt_entry(t["clean_prompt_str"], t["corrupted_prompt_str"], t["clean_input_ids"],
                                           t["corrupted_input_ids"], given[key]["target_str"], t["answer_ids"])
                slots[key] = t["slots"]
            values["prompt"] = prompt
            values["slot"] = {"dummy_labels": dump["dummy_labels"], "trials": slots}
        return {"values": values, "durations": {}, "injection_error": None, "origin": "fv run files"}
