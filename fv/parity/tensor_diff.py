"""The element-wise comparison of two tensors under a tolerance: how many elements differ, the first and the worst
with both values, the relative norm, in float64 on the CPU; a NaN or an infinity on either side never agrees. Reads
like pytest-regressions' numeric failures (shape, count, max abs and rel error, worst index).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fv.parity.tolerance import Tolerance, rms


@dataclass
class TensorDiff:
    src_shape: tuple
    fv_shape: tuple
    dtype: str
    n_elements: int
    n_mismatch: int
    max_abs: float
    max_rel: float
    worst_index: tuple | None
    src_value: float | None
    fv_value: float | None
    first_index: tuple | None = None  # the first differing element in index (C) order
    first_src: float | None = None
    first_fv: float | None = None
    bad: torch.Tensor | None = None  # the mismatch mask, for describing where mismatches fall
    rms: float = 0.0  # RMS of the expected (src) side: the scale of the tolerance's rms term
    rel_norm: float = 0.0  # ||fv - src|| / ||src||
    norm_fail: bool = False  # the norm-wise check failed (it may fail with no element outside its own bound)

    @property
    def shapes_differ(self) -> bool:
        return self.src_shape != self.fv_shape

    @property
    def failed(self) -> bool:
        return self.shapes_differ or bool(self.n_mismatch) or self.norm_fail

    def lines(self, tol: Tolerance) -> list[str]:
        if self.shapes_differ:
            return [f"shapes differ: src {self.src_shape} vs fv {self.fv_shape}"]
        pct = 100.0 * self.n_mismatch / max(self.n_elements, 1)
        out = [f"shape {self.src_shape}, dtype {self.dtype}, tolerance {tol.describe()}",
               f"{self.n_mismatch} of {self.n_elements} elements differ ({pct:.2f}%)",
               f"max abs diff {self.max_abs:.6g}, max rel diff {self.max_rel:.6g}"
               + (f", rms of the expected side {self.rms:.6g}, allowed {tol.bound(0.0, self.rms):.3g} + rtol*|x|"
                  if tol.rms_atol else "")
               + (f", relative norm diff {self.rel_norm:.3g}" if tol.norm_rtol else "")]
        if self.norm_fail:
            out.append(f"norm-wise check failed: ||fv - src|| / ||src|| = {self.rel_norm:.3g} > {tol.norm_rtol:.3g}")
        if self.first_index is not None:
            out.append(f"first differing index {list(self.first_index)}: src {self.first_src!r} fv {self.first_fv!r}")
        if self.worst_index is not None and self.n_mismatch:
            out.append(f"worst at index {list(self.worst_index)}: src {self.src_value!r} fv {self.fv_value!r}")
        return out


def diff_tensors(src: torch.Tensor, fv: torch.Tensor, tol: Tolerance) -> TensorDiff:
    """Element-wise comparison of ``fv`` with ``src`` (the expected side) under ``tol``, in float64 on the CPU.

    A NaN or an infinity on either side counts as a mismatch; shapes that differ give a ``TensorDiff`` with every
    element mismatched and infinite errors. Reports the first and the worst differing index with both values.
    """
    if tuple(src.shape) != tuple(fv.shape):
        return TensorDiff(tuple(src.shape), tuple(fv.shape), str(fv.dtype), fv.numel(), max(fv.numel(), 1), math.inf, math.inf, None, None, None)
    a = src.detach().to("cpu", torch.float64)
    b = fv.detach().to("cpu", torch.float64)
    absd = (a - b).abs()
    reld = absd / a.abs().clamp_min(1e-30)
    scale = rms(a)
    fin = torch.isfinite(a) & torch.isfinite(b)
    # a NaN or an infinity on either side is never equal, even to itself (compare_stage names the stage NONFINITE)
    if tol.is_exact:
        bad = ~(a == b) | ~fin
    else:
        bad = ~(absd <= tol.atol + tol.rtol * a.abs() + tol.rms_atol * scale) | ~fin
    n_bad = int(bad.sum())
    a_norm = float(a[fin].norm()) if a.numel() else 0.0
    d_norm = float((a - b)[fin].norm()) if a.numel() else 0.0
    rel_norm = d_norm / a_norm if a_norm > 0 else (0.0 if d_norm == 0 else math.inf)
    norm_fail = not tol.is_exact and not tol.norm_ok(d_norm, a_norm, a.numel())
    if a.numel() == 0:
        return TensorDiff(tuple(a.shape), tuple(b.shape), str(fv.dtype), 0, 0, 0.0, 0.0, None, None, None)
    if bool(fin.all()):
        flat = int(torch.argmax(absd))
        max_abs = float(absd.max())
    elif bool(fin.any()):  # the worst difference among the elements that are numbers on both sides
        finite_absd = torch.where(fin, absd, torch.zeros_like(absd))
        flat = int(torch.argmax(finite_absd))
        max_abs = float(finite_absd.max())
    else:
        flat, max_abs = 0, math.nan
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape)) if a.ndim else ()
    first = first_src = first_fv = None
    if n_bad:
        pos = int(torch.nonzero(bad.reshape(-1))[0])
        first = tuple(int(i) for i in torch.unravel_index(torch.tensor(pos), a.shape)) if a.ndim else ()
        first_src, first_fv = float(a.reshape(-1)[pos]), float(b.reshape(-1)[pos])
    max_rel = float(torch.where(fin, reld, torch.zeros_like(reld)).max()) if max_abs > 0 else (math.nan if math.isnan(max_abs) else 0.0)
    return TensorDiff(tuple(a.shape), tuple(b.shape), str(fv.dtype), a.numel(), n_bad, max_abs,
                      max_rel, idx if max_abs > 0 else None,
                      float(a.reshape(-1)[flat]) if max_abs > 0 else None, float(b.reshape(-1)[flat]) if max_abs > 0 else None,
                      first, first_src, first_fv, bad, scale, rel_norm, norm_fail)


def allclose(tol: Tolerance, actual: torch.Tensor, expected: torch.Tensor) -> bool:
    """Both of ``tol``'s checks (elementwise and norm-wise) on two tensors of one shape."""
    return not diff_tensors(expected, actual, tol).failed
