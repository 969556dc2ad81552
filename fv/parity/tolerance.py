"""Named tolerances, with where their numbers come from (after TransformerLens): exact for the gate against the live
reference, and fp32, fp16 and bf16 for goldens replayed on another CPU and for fast mode (docs/tolerances.md).
``tolerance_for`` picks the one of the dtype a model computes in; ``rms`` is the scale its ``rms_atol`` term uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Tolerance:
    """A named tolerance (docs/tolerances.md): element i of ``actual`` agrees with ``expected`` when
    ``|actual_i - expected_i| <= atol + rtol * |expected_i| + rms_atol * rms(expected)``, and the whole tensor (or
    JSON field) agrees when ``||actual - expected||_2 <= norm_rtol * ||expected||_2 + atol * sqrt(n)``.

    ``rms_atol`` scales the allowance by the expected side's RMS instead of each element's size, so an element that
    cancels to near zero is not held to an impossible relative bound; ``norm_rtol`` (0: no norm check) catches a
    change spread thinly over many elements that each stay inside the elementwise bound. ``stage_rms_atol`` holds
    per-stage overrides of ``rms_atol`` (a stage whose numbers lose more digits, as mean activations in fp16 do).
    """

    name: str
    atol: float
    rtol: float
    origin: str
    rms_atol: float = 0.0
    norm_rtol: float = 0.0
    stage_rms_atol: tuple = ()
    eps: float = 0.0  # the compute dtype's machine epsilon (0 for the exact tolerance)

    @property
    def is_exact(self) -> bool:
        return self.atol == 0 and self.rtol == 0 and self.rms_atol == 0

    def for_stage(self, stage: str) -> "Tolerance":
        """This tolerance as it applies to one stage (its ``stage_rms_atol`` override, if any)."""
        over = dict(self.stage_rms_atol).get(stage)
        return self if over is None else replace(self, name=f"{self.name}/{stage}", rms_atol=over, stage_rms_atol=())

    def with_probability_floor(self, logit_scale: float, p_max: float) -> "Tolerance":
        """This tolerance with an absolute allowance for differences of probabilities computed from logits of size
        up to ``logit_scale`` in this dtype, the probabilities being at most ``p_max``.

        A logit of size L is rounded to steps of ``eps * L`` (the last layers' sums and the unembedding round in the
        compute dtype); a change dz of the logits moves a probability p by ``p * (dz_t - sum_j p_j dz_j)``, at most
        ``2 p dz``, with ``p (1 - p) <= min(p, 1/4)`` where the target's own logit dominates. An indirect effect is
        the difference of two such probabilities, so its floor is ``2 * eps * L * min(p_max, 1/4)`` (one step per
        probability). Below it the two sides cannot be told apart, however small the effects' own RMS (a model's
        effects are often far smaller than its probabilities); with small probabilities (random tiny models) it
        stays far below the RMS allowance."""
        floor = 2 * self.eps * float(logit_scale) * min(float(p_max), 0.25)
        if self.is_exact or not math.isfinite(floor) or floor <= self.atol:
            return self
        return replace(self, name=f"{self.name}/p", atol=floor)

    def bound(self, expected: float, scale: float = 0.0) -> float:
        """The largest allowed ``|actual - expected|`` for one element, ``scale`` being the RMS of its tensor/field."""
        return self.atol + self.rtol * abs(expected) + self.rms_atol * scale

    def close(self, a: float, b: float, scale: float = 0.0) -> bool:
        """``a`` (actual) agrees with ``b`` (expected); ``scale``: the RMS of the expected values it belongs to."""
        if not (math.isfinite(a) and math.isfinite(b)):
            return False  # a NaN or an infinity agrees with nothing, itself included (the stage is NONFINITE)
        if self.is_exact:
            return a == b
        return abs(a - b) <= self.bound(b, scale)

    def norm_ok(self, diff_norm: float, expected_norm: float, n: int) -> bool:
        return self.norm_rtol <= 0 or diff_norm <= self.norm_rtol * expected_norm + self.atol * math.sqrt(max(n, 1))

    def describe(self) -> str:
        if self.is_exact:
            return "exact (max_abs_diff == 0.0)"
        parts = [f"atol {self.atol:.3g}"] + ([f"rtol {self.rtol:.3g}"] if self.rtol else []) \
            + ([f"{self.rms_atol:.3g}*rms"] if self.rms_atol else []) + ([f"norm {self.norm_rtol:.3g}"] if self.norm_rtol else [])
        return f"{self.name} ({', '.join(parts)})"


# One place for every tolerance, with where its numbers come from (after TransformerLens). The measured noise is
# fv's exact replay of each family's goldens (written under avx2, one thread) under ATEN_CPU_CAPABILITY=default and
# avx2 with 1 and 2 threads, max |diff| / rms(golden) over the families; docs/tolerances.md has the table.
EXACT = Tolerance("exact", 0.0, 0.0, "docs/reference.md, \"Parity\": exact mode follows the reference's operations, so on the same device and dtype every number is bit-identical")
FP32 = Tolerance(
    "fp32", torch.finfo(torch.float32).tiny, 0.0,
    "docs/tolerances.md: fp32 eps 2**-23; a length-K sum (K=64) drifts ~sqrt(K)*eps=9.5e-7 of its scale per layer and "
    "the drift compounds over the layers; measured across CPU kernels and thread counts up to 3.4e-4*rms (indirect "
    "effects), 8.5e-5*rms (mean activations), relative norm 4.9e-5: allowance 2e-3*rms (6x), norm 5e-4 (10x)",
    rms_atol=2e-3, norm_rtol=5e-4, eps=torch.finfo(torch.float32).eps)
FP16 = Tolerance(
    "fp16", torch.finfo(torch.float16).tiny, 0.0,
    "docs/tolerances.md: fp16 eps 2**-10; below its smallest normal (6.1e-5) no relative digit is kept; measured "
    "across CPU kernels and thread counts up to 8.0e-2*rms (mean activations, tiny-gpt-neox), 6.7e-3*rms "
    "(injection logits), 5.1e-3*rms (FV), relative norm 4.2e-3: allowance 0.25*rms for mean activations, "
    "0.05*rms elsewhere (3-7x), norm 0.02 (5x)",
    rms_atol=0.05, norm_rtol=0.02, stage_rms_atol=(("mean_activations", 0.25),), eps=torch.finfo(torch.float16).eps)
BF16 = Tolerance(
    "bf16", torch.finfo(torch.bfloat16).tiny, 0.0,
    "docs/tolerances.md: bf16 eps 2**-7, 8x fp16's: fp16's measured allowances times 8 (no bf16 golden to measure "
    "on), capped at 1*rms",
    rms_atol=0.4, norm_rtol=0.16, stage_rms_atol=(("mean_activations", 1.0),), eps=torch.finfo(torch.bfloat16).eps)


def tolerance_for(dtype: torch.dtype, exact: bool) -> Tolerance:
    """The tolerance of the dtype the model computes in (EXACT for the exact gate against the live reference)."""
    if exact:
        return EXACT
    return {torch.bfloat16: BF16, torch.float16: FP16}.get(dtype, FP32)


def rms(t: torch.Tensor) -> float:
    """Root mean square of a tensor's finite elements (0.0 for none)."""
    x = t.detach().to("cpu", torch.float64).reshape(-1)
    x = x[x.isfinite()]
    return float(x.pow(2).mean().sqrt()) if x.numel() else 0.0
