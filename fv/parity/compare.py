"""Comparing two sides stage by stage: counts, worst differences, and the first place they part.

Tolerances are named, with where their numbers come from (after TransformerLens). Identities (strings, ids,
labels, slot maps, top-head (layer, head) pairs) are always compared exactly; only floats use a tolerance.
A numeric failure reads like pytest-regressions': shape, how many elements differ, max abs and rel error,
and the worst index with both values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from fv.parity.pattern import describe, multi_token_slots
from fv.parity.stages import PER_TRIAL_STAGES, STAGES


@dataclass(frozen=True)
class Tolerance:
    name: str
    atol: float
    rtol: float
    origin: str

    def close(self, a: float, b: float) -> bool:
        if self.atol == 0 and self.rtol == 0:
            return a == b or (math.isnan(a) and math.isnan(b))
        return abs(a - b) <= self.atol + self.rtol * abs(b)


EXACT = Tolerance("exact", 0.0, 0.0, "docs/reference.md, \"Parity\": exact mode follows the reference's operations, so on the same device and dtype every number is bit-identical")
FP32 = Tolerance("fp32", 1e-5, 1e-4, "docs/reference.md, \"Parity\", default for fp32: fast mode and goldens replayed on another CPU, whose kernels may differ in the last bits")
BF16 = Tolerance("bf16", 2e-2, 2e-2, "bf16 keeps 8 mantissa bits (relative step 2**-7 ~ 7.8e-3); two steps of slack")
FP16 = Tolerance("fp16", 2e-3, 2e-3, "fp16 keeps 11 mantissa bits (relative step 2**-10 ~ 9.8e-4); two steps of slack")


def tolerance_for(dtype: torch.dtype, exact: bool) -> Tolerance:
    if exact:
        return EXACT
    return {torch.bfloat16: BF16, torch.float16: FP16}.get(dtype, FP32)


@dataclass
class Mismatch:
    stage: str
    file: str
    key: str
    trial_key: str | None
    src: Any
    fv: Any

    def __str__(self) -> str:
        where = f" trial {self.trial_key}" if self.trial_key else ""
        return f"[{self.stage}]{where} {self.file}:{self.key}: src={_short(self.src)} fv={_short(self.fv)}"

    def as_dict(self) -> dict:
        tid, tidx = (self.trial_key.rsplit(":", 1) if self.trial_key else (None, None))
        return {"stage": self.stage, "file": self.file, "key": self.key,
                "trial_id": tid, "trial_idx": None if tidx is None else int(tidx),
                "src": _jsonable(self.src), "fv": _jsonable(self.fv)}


def _short(v: Any, n: int = 120) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.tolist() if v.numel() <= 16 else f"tensor{tuple(v.shape)}"
    return v


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

    @property
    def shapes_differ(self) -> bool:
        return self.src_shape != self.fv_shape

    def lines(self, tol: Tolerance) -> list[str]:
        if self.shapes_differ:
            return [f"shapes differ: src {self.src_shape} vs fv {self.fv_shape}"]
        pct = 100.0 * self.n_mismatch / max(self.n_elements, 1)
        out = [f"shape {self.src_shape}, dtype {self.dtype}, tolerance {tol.name} (atol {tol.atol}, rtol {tol.rtol})",
               f"{self.n_mismatch} of {self.n_elements} elements differ ({pct:.2f}%)",
               f"max abs diff {self.max_abs:.6g}, max rel diff {self.max_rel:.6g}"]
        if self.first_index is not None:
            out.append(f"first differing index {list(self.first_index)}: src {self.first_src!r} fv {self.first_fv!r}")
        if self.worst_index is not None and self.n_mismatch:
            out.append(f"worst at index {list(self.worst_index)}: src {self.src_value!r} fv {self.fv_value!r}")
        return out


def diff_tensors(src: torch.Tensor, fv: torch.Tensor, tol: Tolerance) -> TensorDiff:
    if tuple(src.shape) != tuple(fv.shape):
        return TensorDiff(tuple(src.shape), tuple(fv.shape), str(fv.dtype), fv.numel(), max(fv.numel(), 1), math.inf, math.inf, None, None, None)
    a = src.detach().to("cpu", torch.float64)
    b = fv.detach().to("cpu", torch.float64)
    absd = (a - b).abs()
    reld = absd / a.abs().clamp_min(1e-30)
    if tol.atol == 0 and tol.rtol == 0:
        bad = ~((a == b) | (a.isnan() & b.isnan()))
    else:
        bad = absd > tol.atol + tol.rtol * a.abs()
    n_bad = int(bad.sum())
    if a.numel() == 0:
        return TensorDiff(tuple(a.shape), tuple(b.shape), str(fv.dtype), 0, 0, 0.0, 0.0, None, None, None)
    flat = int(torch.argmax(absd))
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape)) if a.ndim else ()
    max_abs = float(absd.max())
    first = first_src = first_fv = None
    if n_bad:
        pos = int(torch.nonzero(bad.reshape(-1))[0])
        first = tuple(int(i) for i in torch.unravel_index(torch.tensor(pos), a.shape)) if a.ndim else ()
        first_src, first_fv = float(a.reshape(-1)[pos]), float(b.reshape(-1)[pos])
    return TensorDiff(tuple(a.shape), tuple(b.shape), str(fv.dtype), a.numel(), n_bad, max_abs,
                      float(reld.max()) if max_abs > 0 else 0.0, idx if max_abs > 0 else None,
                      float(a.reshape(-1)[flat]) if max_abs > 0 else None, float(b.reshape(-1)[flat]) if max_abs > 0 else None,
                      first, first_src, first_fv, bad)


def walk_diffs(src: Any, fv: Any, tol: Tolerance, path: str = "") -> Iterator[tuple[str, Any, Any, float]]:
    """Yield ``(path, src, fv, abs_diff)`` where two JSON-like structures disagree; floats within ``tol`` agree."""
    if isinstance(src, dict) and isinstance(fv, dict):
        for k in list(src) + [k for k in fv if k not in src]:
            p = f"{path}.{k}" if path else str(k)
            if k not in fv:
                yield p, src[k], "<missing>", math.inf
            elif k not in src:
                yield p, "<missing>", fv[k], math.inf
            elif k == "logits_sha256" and tol is not EXACT:
                continue  # a hash proves bit-identity only; under a tolerance the numbers speak
            else:
                yield from walk_diffs(src[k], fv[k], tol, p)
    elif isinstance(src, (list, tuple)) and isinstance(fv, (list, tuple)):
        if len(src) != len(fv):
            yield f"{path}.len", len(src), len(fv), math.inf
        for i, (a, b) in enumerate(zip(src, fv)):
            yield from walk_diffs(a, b, tol, f"{path}[{i}]")
    elif isinstance(src, float) or isinstance(fv, float):
        if isinstance(src, (int, float)) and isinstance(fv, (int, float)) and not isinstance(src, bool):
            if not tol.close(float(fv), float(src)):
                yield path, src, fv, abs(float(src) - float(fv))
        else:
            yield path, src, fv, math.inf
    elif src != fv:
        yield path, src, fv, math.inf


def max_float_diff(src: Any, fv: Any) -> float:
    """Largest abs difference between matching floats of two structures (0.0 when none differ)."""
    worst = 0.0
    for _p, a, b, d in walk_diffs(src, fv, EXACT):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            worst = max(worst, d)
    return worst


SKIP = "SKIP"  # a stage's status when the other side has no value for it


@dataclass
class StageResult:
    name: str
    status: str
    mismatch_count: int
    max_abs_diff: float
    max_rel_diff: float = 0.0
    duration_sec: float = 0.0
    mismatches: list[Mismatch] = field(default_factory=list)
    per_trial: dict[str, int] = field(default_factory=dict)
    detail: list[str] = field(default_factory=list)
    worst: dict | None = None  # the largest numeric difference, reported apart from the first one
    pattern: str = ""  # where the mismatches fall (trials, layers, heads, slots), in words
    reference_function: str = ""  # the reference function behind this stage

    def summary(self, limit: int = 20) -> str:
        lines = [f"stage {self.name}: {self.status}, mismatch_count={self.mismatch_count}, max_abs_diff={self.max_abs_diff:.6g}"]
        if self.reference_function and self.status != "PASS":
            lines.append(f"  reference function: {self.reference_function}")
        if self.pattern:
            lines.append(f"  where: {self.pattern}")
        lines += [f"  {d}" for d in self.detail]
        lines += [f"  {m}" for m in self.mismatches[:limit]]
        if len(self.mismatches) > limit:
            lines.append(f"  ... and {len(self.mismatches) - limit} more")
        return "\n".join(lines)

    def as_row(self) -> dict:
        return {"name": self.name, "status": self.status, "mismatch_count": self.mismatch_count,
                "max_abs_diff": self.max_abs_diff, "max_rel_diff": self.max_rel_diff, "duration_sec": round(self.duration_sec, 4)}


STAGE_FILES = {"prompt": "prompt.json", "slot": "slot.json", "mean_activations": "mean_activations.pt",
               "indirect_effect": "indirect_effect.pt", "top_heads": "top_heads.json", "fv": "fv.pt",
               "injection": "injection.json"}


def _trial_of(path: str, stage: str, trial_keys: list[str]) -> str | None:
    if stage == "slot":
        parts = path.split(".")
        return parts[1] if len(parts) > 1 and parts[0] == "trials" else None
    if stage in ("prompt", "injection"):
        return path.split(".")[0]
    return None


def compare_stage(stage: str, src: Any, fv: Any, tol: Tolerance, trial_keys: list[str], duration: float = 0.0,
                  slot_labels: Sequence[str] | None = None, multi_slots: Sequence[int] | None = None) -> StageResult:
    """One stage's verdict. Keys of per-trial stages must match one to one; a missing or extra one is a mismatch.

    Mismatches are listed in trial order, then index order, so the first one is the first place the sides part;
    the largest difference is reported apart, as ``worst``; ``pattern`` says where the mismatches fall.
    """
    file = STAGE_FILES[stage]
    mism: list[Mismatch] = []
    per_trial = {k: 0 for k in trial_keys} if stage in PER_TRIAL_STAGES else {}
    detail: list[str] = []
    max_abs = max_rel = 0.0
    worst = None
    pattern = ""
    if isinstance(src, torch.Tensor) or isinstance(fv, torch.Tensor):
        d = diff_tensors(src, fv, tol)
        detail = d.lines(tol)
        max_abs, max_rel = d.max_abs, d.max_rel
        if d.shapes_differ:
            mism.append(Mismatch(stage, file, "shape", None, d.src_shape, d.fv_shape))
        elif d.n_mismatch:
            first = list(d.first_index or ())
            key = trial_keys[first[0]] if stage == "indirect_effect" and first and first[0] < len(trial_keys) else None
            mism.append(Mismatch(stage, file, str(first), key, d.first_src, d.first_fv))
            wi = list(d.worst_index or ())
            worst = {"key": str(wi), "trial": trial_keys[wi[0]] if stage == "indirect_effect" and wi and wi[0] < len(trial_keys) else None,
                     "src": d.src_value, "fv": d.fv_value, "abs_diff": d.max_abs}
            pattern = describe(stage, d.bad, slot_labels, multi_slots, trial_keys)
            if stage == "indirect_effect":
                for t, k in enumerate(trial_keys[: d.bad.shape[0]]):
                    per_trial[k] = int(d.bad[t].sum())
        count = d.n_mismatch if not d.shapes_differ else 1
    elif stage == "top_heads":
        count = 0
        for i, (a, b) in enumerate(zip(src, fv)):
            if (a[0], a[1]) != (b[0], b[1]):
                swap_ok = abs(a[2] - b[2]) < max(tol.atol, 1e-12) and tol is not EXACT
                if swap_ok:
                    detail.append(f"heads {a[:2]} and {b[:2]} swap at rank {i}; scores differ by less than the tolerance")
                    continue
                count += 1
                mism.append(Mismatch(stage, file, f"[{i}]", None, a, b))
            elif not tol.close(float(b[2]), float(a[2])):
                count += 1
                mism.append(Mismatch(stage, file, f"[{i}].score", None, a[2], b[2]))
            max_abs = max(max_abs, abs(float(a[2]) - float(b[2])))
        if len(src) != len(fv):
            count += 1
            mism.append(Mismatch(stage, file, "len", None, len(src), len(fv)))
    else:
        diffs = list(walk_diffs(src, fv, tol))
        for path, a, b, dd in diffs:
            tk = _trial_of(path, stage, trial_keys)
            if tk in per_trial:
                per_trial[tk] += 1
            mism.append(Mismatch(stage, file, path, tk, a, b))
        count = len(diffs)
        max_abs = max_float_diff(src, fv)
    if stage not in ("mean_activations", "indirect_effect", "fv") and mism:
        keys = sorted({m.trial_key for m in mism if m.trial_key}, key=lambda k: trial_keys.index(k) if k in trial_keys else len(trial_keys))
        if keys:
            pattern = f"{len(mism)} differences in {len(keys)} of {len(trial_keys)} trials ({', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''})"
    return StageResult(stage, "PASS" if count == 0 else "FAIL", count, max_abs, max_rel, duration, mism, per_trial, detail,
                       worst, pattern)


@dataclass
class ParityResult:
    stages: list[StageResult]
    meta: dict

    @property
    def status(self) -> str:
        # SKIP: a stage the golden source does not hold (user goldens hold three); never all of them
        compared = [s for s in self.stages if s.status != SKIP]
        return "PASS" if compared and all(s.status == "PASS" for s in compared) else "FAIL"

    @property
    def earliest_failed_stage(self) -> str | None:
        return next((s.name for s in self.stages if s.status == "FAIL"), None)

    def stage(self, name: str) -> StageResult:
        return next(s for s in self.stages if s.name == name)

    def first_divergence(self) -> dict | None:
        """The first mismatch in stage order, then trial order, then index order."""
        for s in self.stages:
            if s.mismatches:
                return {**s.mismatches[0].as_dict(), "pattern": s.pattern, "reference_function": s.reference_function}
        return None


def compare_all(src: Any, fv: Any, tol: Tolerance, trial_keys: list[str], meta: dict,
                stage_functions: dict[str, str] | None = None) -> ParityResult:
    """Every stage in order; ``src`` and ``fv`` are ``StageValues``. Slot labels and multi-token word slots
    come from the source's slot stage, so a mean-activation mismatch can be described by slot."""
    slot = src.values.get("slot") or {}
    labels = [str(l) for _p, l in slot.get("dummy_labels", [])] or None
    multi = multi_token_slots(slot) if slot else None
    stages = []
    for s in STAGES:
        if s not in src.values:
            stages.append(StageResult(s, SKIP, 0, 0.0, detail=[f"not compared: the golden source holds no {s}"]))
            continue
        r = compare_stage(s, src.values[s], fv.values[s], tol, trial_keys, fv.durations.get(s, 0.0) + src.durations.get(s, 0.0),
                          labels, multi)
        r.reference_function = (stage_functions or {}).get(s, "")
        stages.append(r)
    return ParityResult(stages, meta)
