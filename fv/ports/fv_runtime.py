"""fv's own runtime as a port of the protocol of ``fv.ports.functions``: one method per stage, plain data in and
out, so the default gate (fv's runtime against the reference) is one case of gating any port, and a port's
adapter has a worked example to follow.

Run in a port's process (``--port fv.ports.fv_runtime:FvRuntimePort --port-root <this checkout>``) or in-process.
"""

from __future__ import annotations

from typing import Any

import torch


class FvRuntimePort:
    """fv's runtime, stage by stage (``fv.parity.stages`` composes the same functions end to end)."""

    name = "fv-runtime"

    def __init__(self) -> None:
        self.lm: Any = None

    def load(self, model: str, device: str, dtype: str) -> dict:
        """Load ``model`` as fv loads it; returns the dtype it computes in."""
        from fv.model.loading import load_model

        self.lm = load_model(model, device, dtype)
        return {"dtype": str(self.lm.dtype).replace("torch.", ""), "model": self.lm.name}

    def _prepared(self, trials: dict) -> tuple[list, list]:
        from fv.parity.stages import fv_dummy_labels
        from fv.runtime.prepared import prepare_trials
        from fv.runtime.trials import validate_trials

        tr = validate_trials(trials, "the port's trials")
        meta = trials.get("meta") or {}
        dummy = fv_dummy_labels(self.lm, tr, meta.get("prefixes"), meta.get("separators"))
        return prepare_trials(self.lm.tokenizer, tr, dummy, self.lm.prepend_bos, self.lm.info.device), dummy

    def prompt(self, trials: dict, keys: list, params: dict) -> dict:
        from fv.parity.stages import fv_prompt_values

        return fv_prompt_values(self._prepared(trials)[0])

    def slot(self, trials: dict, keys: list, params: dict) -> dict:
        from fv.parity.stages import fv_slot_values

        return fv_slot_values(*self._prepared(trials))

    def mean_activations(self, trials: dict, keys: list, params: dict) -> torch.Tensor:
        from fv.runtime.activations import mean_head_activations

        prepared, dummy = self._prepared(trials)
        return mean_head_activations(self.lm.model, self.lm.info, [pt.clean for pt in prepared], len(dummy),
                                     mode=params.get("mode", "exact"))

    def indirect_effect(self, trials: dict, keys: list, params: dict, mean_activations: torch.Tensor) -> torch.Tensor:
        from fv.runtime.effects import indirect_effects, pad_token_id

        prepared, _dummy = self._prepared(trials)
        return indirect_effects(self.lm.model, self.lm.info, [pt.corrupted for pt in prepared], mean_activations,
                                pad_token_id(self.lm.tokenizer), mode=params.get("mode", "exact"))

    def top_heads(self, params: dict, indirect_effect: torch.Tensor) -> list:
        from fv.runtime.top_heads import top_heads

        return [[l, h, s] for l, h, s in top_heads(indirect_effect, int(params["n_top_heads"]))]

    def fv(self, params: dict, mean_activations: torch.Tensor, top_heads: list) -> torch.Tensor:
        from fv.runtime.vectors import function_vector

        heads = [(int(l), int(h), float(s)) for l, h, s in top_heads]
        mean = mean_activations.to(self.lm.info.device)
        return function_vector(mean, heads, self.lm.info).vector.reshape(-1).to("cpu", torch.float32)

    def injection(self, trials: dict, keys: list, params: dict, fv: torch.Tensor) -> dict:
        from fv.parity.stages import score_pair
        from fv.runtime.injection import intervene
        from fv.runtime.prepared import PROMPT_SETS

        prepared, _dummy = self._prepared(trials)
        vec = fv.to(self.lm.info.device, self.lm.dtype).reshape(1, -1)
        out = {}
        for pt in prepared:
            entry = {}
            for name in PROMPT_SETS:
                p = pt.prompt_set(name)
                clean, edited = intervene(self.lm.model, self.lm.info, p.inputs, int(params["edit_layer"]), vec)
                entry[name] = score_pair(clean, edited, p.target_id)
            out[pt.key] = entry
        return out
