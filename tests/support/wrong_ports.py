"""Deliberately wrong ports of the reference (fv's runtime port with one stage broken), for the port gate's tests:
run in a port's process by ``MODULE:OBJECT`` from the checkout's root, as a user's port would be."""

from __future__ import annotations

import torch

from fv.ports.fv_runtime import FvRuntimePort


class WrongSlot(FvRuntimePort):
    """Mean activations with the last two slots swapped (the query slot read from the one before it)."""

    name = "wrong-slot"

    def mean_activations(self, trials, keys, params):
        m = super().mean_activations(trials, keys, params).clone()
        m[:, :, [-1, -2]] = m[:, :, [-2, -1]]
        return m


class HeadOffByOne(FvRuntimePort):
    """Indirect effects with the heads split off by one (head h reported as head h + 1)."""

    name = "head-off-by-one"

    def indirect_effect(self, trials, keys, params, mean_activations):
        return torch.roll(super().indirect_effect(trials, keys, params, mean_activations), 1, dims=2)


class HalfFV(FvRuntimePort):
    """The FV at half strength."""

    name = "half-fv"

    def fv(self, params, mean_activations, top_heads):
        return super().fv(params, mean_activations, top_heads) * 0.5


class TargetOffByOne(FvRuntimePort):
    """Injection scored on the token after the target."""

    name = "target-off-by-one"

    def injection(self, trials, keys, params, fv):
        out = super().injection(trials, keys, params, fv)
        for entry in out.values():
            for score in entry.values():
                score["target_id"] += 1
        return out


class NoEffects(FvRuntimePort):
    """A port without an indirect-effect stage."""

    name = "no-effects"
    indirect_effect = None  # type: ignore[assignment]
