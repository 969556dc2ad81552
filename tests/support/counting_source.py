"""A stand-in for the reference's side in the src-values cache tests: a live source whose computations are counted,
keyed by the real reference key parts of a fake ``src/`` tree, returning values made from the model's weights and
the trials (no reference run). Imported by the cache tests and by the writer processes they start."""

from __future__ import annotations

from pathlib import Path

from fv.parity.sides import LiveSource
from fv.parity.src_cache import SrcCache
from fv.parity.stages import Params, StageValues
from fv.reference.stages import reference_key_parts

PARAMS = Params(n_top_heads=3, edit_layer=1, max_trials=2)


def stand_in_values(lm, trials) -> StageValues:
    """Stand-in reference values: tensors from the model's weights and JSON parts from the trials."""
    w = next(lm.model.parameters()).detach().reshape(-1)[:8].clone()
    keys = [f"{t.trial_id}:{t.trial_idx}" for t in trials]
    sv = StageValues()
    sv.values = {"prompt": {k: {"target_str": t.prompt_data_clean["query_target"]["output"]} for k, t in zip(keys, trials)},
                 "slot": {"dummy_labels": [[0, "bos"]], "trials": {}}, "mean_activations": w.view(2, 4),
                 "indirect_effect": w.view(1, 2, 4).repeat(len(trials), 1, 1), "top_heads": [[0, 1, 0.5]],
                 "fv": w * 2, "injection": {k: {"base": {"prob": float("nan")}} for k in keys}}
    return sv


class Counting:
    """A live source whose computations are counted, keyed by the real reference key parts of ``src``."""

    def __init__(self, src: Path, cache: SrcCache | None):
        self.calls = 0

        def compute(lm, trials, params, prefixes, separators):
            self.calls += 1
            return stand_in_values(lm, trials), None

        self.source = LiveSource(compute=compute, notes=[], compat=False, description="counting",
                                 key_parts=lambda lm, memo: reference_key_parts(src, None, False, lm, memo), cache=cache)
