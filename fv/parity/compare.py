"""Comparing two sides stage by stage: each stage's verdict (PASS, FAIL, NONFINITE, SKIP; a PASS that proves little
named degenerate), its counts, worst difference and the first place the sides part, and the verdict of them all.

The parts are one module per kind of value, after pytest-regressions: named tolerances in ``fv.parity.tolerance``,
tensors in ``fv.parity.tensor_diff``, JSON-like values in ``fv.parity.json_diff`` (re-exported here). Identities
(strings, ids, labels, slot maps, top-head (layer, head) pairs) are always compared exactly; only floats use a
tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from fv.parity.json_diff import (  # noqa: F401  (the comparison's parts, read here by name too)
    field_scales,
    float_fields,
    json_norm_problems,
    max_float_diff,
    walk_diffs,
)
from fv.parity.pattern import describe, multi_token_slots
from fv.parity.registry import EFFECT_STAGES, PER_TRIAL_STAGES, STAGE_DIMS, STAGE_FILES, STAGES
from fv.parity.tensor_diff import TensorDiff, diff_tensors  # noqa: F401
from fv.parity.tolerance import BF16, EXACT, FP16, FP32, Tolerance, rms, tolerance_for  # noqa: F401


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


SKIP = "SKIP"  # a stage's status when the other side has no value for it
NONFINITE = "NONFINITE"  # a stage where either side holds a NaN or an infinity: never a PASS, never a mere FAIL
FAILED_STATUSES = ("FAIL", NONFINITE)

# STAGE_DIMS (the dims of each tensor stage, for naming where a NaN or an infinity first appears) and EFFECT_STAGES
# (the stages whose values are effects) come from fv.parity.registry
# an indirect effect no larger than this many eps x p (p: the probability it is a difference of) is rounding noise
DEGENERATE_EPS_MULTIPLE = 4.0


def _nonfinite_floats(value: Any, path: str = "") -> Iterator[tuple[str, float]]:
    """``(path, x)`` for every NaN or infinity of a JSON-like structure, in document order."""
    if isinstance(value, dict):
        for k, x in value.items():
            yield from _nonfinite_floats(x, f"{path}.{k}" if path else str(k))
    elif isinstance(value, (list, tuple)):
        for i, x in enumerate(value):
            yield from _nonfinite_floats(x, f"{path}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        yield path, value


def side_nonfinite(stage: str, value: Any, trial_keys: Sequence[str] = (), slot_labels: Sequence[str] | None = None
                   ) -> dict | None:
    """Where one side's value of ``stage`` first holds a NaN or an infinity: ``{"where", "index", "value", "count",
    "trial"}`` (``where`` in words: "trial t:0, layer 3, head 1", "rank 2 (layer 4, head 0)", a JSON path), or None."""
    from fv.runtime.finite import describe_index, first_nonfinite, nonfinite_word

    if isinstance(value, torch.Tensor):
        hit = first_nonfinite(value)
        if hit is None:
            return None
        idx, x, n = hit
        dims = STAGE_DIMS.get(stage, ("element",) * max(value.ndim, 1))[: max(value.ndim, 1)]
        labels = {"trial": list(trial_keys)} if stage == "indirect_effect" else {}
        if stage == "mean_activations" and slot_labels:
            labels["slot"] = [f"{i} ({l})" for i, l in enumerate(slot_labels)]
        trial = trial_keys[idx[0]] if stage == "indirect_effect" and idx and idx[0] < len(trial_keys) else None
        return {"where": describe_index(idx, dims, labels), "index": list(idx), "value": nonfinite_word(x), "count": n,
                "n_values": value.numel(), "trial": trial}
    if stage == "top_heads" and isinstance(value, (list, tuple)):
        bad = [(i, h) for i, h in enumerate(value) if isinstance(h, (list, tuple)) and len(h) > 2
               and isinstance(h[2], (int, float)) and not math.isfinite(float(h[2]))]
        if not bad:
            return None
        i, h = bad[0]
        return {"where": f"rank {i} (layer {h[0]}, head {h[1]})", "index": [i], "value": nonfinite_word(float(h[2])),
                "count": len(bad), "n_values": len(value), "trial": None}
    hits = list(_nonfinite_floats(value))
    if not hits:
        return None
    path, x = hits[0]
    trial = _trial_of(path, stage, list(trial_keys))
    return {"where": (f"trial {trial}, " if trial else "") + path, "index": path, "value": nonfinite_word(x), "count": len(hits),
            "n_values": None, "trial": trial}


def nonfinite_report(stage: str, src: Any, fv: Any, trial_keys: Sequence[str] = (), slot_labels: Sequence[str] | None = None
                     ) -> dict | None:
    """Which side of a stage holds NaNs or infinities (``side``: "fv", "reference" or "both") and where each first
    appears; None when both are finite."""
    mine, theirs = side_nonfinite(stage, fv, trial_keys, slot_labels), side_nonfinite(stage, src, trial_keys, slot_labels)
    if mine is None and theirs is None:
        return None
    side = "both" if mine and theirs else "fv" if mine else "reference"
    first = mine or theirs
    return {"side": side, "where": first["where"], "trial": first["trial"], "fv": mine, "reference": theirs}


def nonfinite_line(stage: str, nf: dict) -> str:
    """The one-line ``NONFINITE:`` message for a stage, from a ``nonfinite_report`` dict: each side's first
    non-finite value, where it is, and how many values are not finite.
    """
    parts = []
    for side in ("fv", "reference"):
        d = nf.get(side)
        if d:
            of = f" of {d['n_values']}" if d.get("n_values") else ""
            parts.append(f"{side}'s first {d['value']} at {d['where']} ({d['count']}{of} values not finite)")
    return f"NONFINITE: {stage} is not finite on {'both sides' if nf['side'] == 'both' else nf['side'] + ' side'}: " + "; ".join(parts)


def degenerate_reason(stage: str, src: Any, tol: "Tolerance", eps: float = 0.0, p_max: float = 0.0,
                      head_effects: torch.Tensor | None = None) -> str | None:
    """Why a stage's comparison proves little, or None: all its values are equal; an indirect effect no larger
    than ``DEGENERATE_EPS_MULTIPLE`` x ``eps`` x ``p_max`` (the rounding step of the probabilities it is a
    difference of); every value within the tolerance of 0 (a side of zeros would pass as well); top heads whose
    mean indirect effects (the rounded scores without ``head_effects``) all lie within the tolerance of their
    median (any order of them would pass). Judged on ``src``, the expected side."""
    if isinstance(src, torch.Tensor):
        x = src.detach().to("cpu", torch.float64).reshape(-1)
        if not x.numel() or not bool(torch.isfinite(x).all()):
            return None
        what = "effects" if stage == "indirect_effect" else "values"
        if x.numel() >= 2 and bool((x == x[0]).all()):
            v = float(x[0])
            return f"all {what} {'0' if v == 0 else repr(v)} ({x.numel()} values)"
        big = float(x.abs().max())
        limit = DEGENERATE_EPS_MULTIPLE * eps * p_max
        if stage == "indirect_effect" and limit > 0 and big <= limit:
            return (f"largest |effect| {big:.3g} is at most {DEGENERATE_EPS_MULTIPLE:g} eps x p = {limit:.3g} (eps {eps:.3g}, "
                    f"p <= {p_max:.3g}): rounding noise of the probabilities it is a difference of")
        if not tol.is_exact and not diff_tensors(src, torch.zeros_like(src), tol).failed:
            return (f"every |{what[:-1]}| (largest {big:.3g}) is within the tolerance of 0 ({tol.describe()}): "
                    f"a side of zeros would pass as well")
        return None
    if stage == "top_heads" and isinstance(src, (list, tuple)) and len(src) >= 2:
        try:
            heads = [(int(h[0]), int(h[1]), float(h[2])) for h in src]
        except (TypeError, ValueError, IndexError):
            return None
        if head_effects is not None and isinstance(head_effects, torch.Tensor) and head_effects.ndim == 3:
            m = head_effects.detach().to("cpu", torch.float64).mean(0)
            if any(l >= m.shape[0] or h >= m.shape[1] for l, h, _ in heads):
                return None
            vals = [float(m[l, h]) for l, h, _ in heads]
            scale, what = rms(m), "mean indirect effects"
        else:
            vals = [sc for _l, _h, sc in heads]
            scale, what = math.sqrt(sum(v * v for v in vals) / len(vals)), "scores"
        if not all(math.isfinite(v) for v in vals):
            return None
        med = sorted(vals)[(len(vals) - 1) // 2]
        spread = max(abs(v - med) for v in vals)
        allow = 0.0 if tol.is_exact else tol.atol + tol.rms_atol * scale
        if spread <= allow:
            if spread == 0:
                return f"the {len(vals)} top heads' {what} are all equal ({med:.3g}): any order of them would pass"
            return (f"the {len(vals)} top heads' {what} all lie within the tolerance ({allow:.3g}) of their median "
                    f"{med:.3g} (largest distance {spread:.3g}): any order of them would pass")
    return None


def value_magnitude(stage: str, src: Any, eps: float = 0.0, p_max: float = 0.0) -> dict | None:
    """How large a tensor stage's expected values are: ``max_abs`` and ``rms``; for indirect effects also the
    probability they are differences of (``p_max``) and the rounding step ``eps * p_max`` it is held against."""
    if not isinstance(src, torch.Tensor) or not src.numel():
        return None
    x = src.detach().to("cpu", torch.float64).reshape(-1)
    x = x[torch.isfinite(x)]
    out = {"max_abs": float(x.abs().max()) if x.numel() else math.nan, "rms": rms(x)}
    if stage == "indirect_effect" and eps > 0 and p_max > 0:
        out.update({"p_max": p_max, "eps": eps, "rounding_step": eps * p_max,
                    "max_abs_over_rounding_step": out["max_abs"] / (eps * p_max)})
    return out


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
    nonfinite: dict | None = None  # NONFINITE: which side holds NaNs or infinities, and where each first appears
    degenerate: str | None = None  # a PASS that proves little, and why (all values 0, rounding noise, ...)
    magnitude: dict | None = None  # how large the expected values are (tensor stages)

    @property
    def status_text(self) -> str:
        """The status as the terminal table and reports show it: "PASS (degenerate: all effects 0 (48 values))"."""
        return f"{self.status} (degenerate: {self.degenerate})" if self.degenerate and self.status == "PASS" else self.status

    def summary(self, limit: int = 20) -> str:
        lines = [f"stage {self.name}: {self.status_text}, mismatch_count={self.mismatch_count}, max_abs_diff={self.max_abs_diff:.6g}"]
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


# STAGE_FILES (the file of each stage in a dump) comes from fv.parity.registry


def _trial_of(path: str, stage: str, trial_keys: list[str]) -> str | None:
    if stage == "slot":
        parts = path.split(".")
        return parts[1] if len(parts) > 1 and parts[0] == "trials" else None
    if stage in ("prompt", "injection"):
        return path.split(".")[0]
    return None


def heads_swap_ok(a: Sequence, b: Sequence, tol: Tolerance, effects: torch.Tensor | None, scale: float) -> bool:
    """Two top heads may trade ranks when the src cannot tell them apart within ``tol``: their mean indirect
    effects (``effects``: the src's (trials, layers, heads) tensor; the rounded scores when absent) differ by no
    more than the tolerance's allowance at that tensor's RMS. Never under the exact tolerance."""
    if tol.is_exact:
        return False
    if effects is not None and effects.ndim == 3:
        m = effects.detach().to("cpu", torch.float64).mean(0)
        la, ha, lb, hb = int(a[0]), int(a[1]), int(b[0]), int(b[1])
        if max(la, lb) < m.shape[0] and max(ha, hb) < m.shape[1]:
            return abs(float(m[la, ha] - m[lb, hb])) <= tol.atol + tol.rms_atol * rms(m)
    return abs(float(a[2]) - float(b[2])) <= tol.atol + tol.rms_atol * scale


def compare_stage(stage: str, src: Any, fv: Any, tol: Tolerance, trial_keys: list[str], duration: float = 0.0,
                  slot_labels: Sequence[str] | None = None, multi_slots: Sequence[int] | None = None,
                  head_effects: torch.Tensor | None = None, lone_slots: Sequence[int] | None = None) -> StageResult:
    """One stage's verdict. Keys of per-trial stages must match one to one; a missing or extra one is a mismatch.

    Mismatches are listed in trial order, then index order, so the first one is the first place the sides part;
    the largest difference is reported apart, as ``worst``; ``pattern`` says where the mismatches fall (slots by
    label, the multi-token word slots ``multi_slots``, and the slots a lone SentencePiece ``▁`` is averaged into,
    ``lone_slots``).
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
        elif d.norm_fail and not d.n_mismatch:
            mism.append(Mismatch(stage, file, "norm", None, "relative norm diff <= " + f"{tol.norm_rtol:.3g}", f"{d.rel_norm:.3g}"))
        elif d.n_mismatch:
            first = list(d.first_index or ())
            key = trial_keys[first[0]] if stage == "indirect_effect" and first and first[0] < len(trial_keys) else None
            mism.append(Mismatch(stage, file, str(first), key, d.first_src, d.first_fv))
            wi = list(d.worst_index or ())
            worst = {"key": str(wi), "trial": trial_keys[wi[0]] if stage == "indirect_effect" and wi and wi[0] < len(trial_keys) else None,
                     "src": d.src_value, "fv": d.fv_value, "abs_diff": d.max_abs}
            pattern = describe(stage, d.bad, slot_labels, multi_slots, trial_keys, lone_slots)
            if stage == "indirect_effect":
                for t, k in enumerate(trial_keys[: d.bad.shape[0]]):
                    per_trial[k] = int(d.bad[t].sum())
        count = 1 if d.shapes_differ else d.n_mismatch if d.n_mismatch else int(d.norm_fail)
    elif stage == "top_heads":
        count = 0
        scores = [float(h[2]) for h in src]
        scale = math.sqrt(sum(x * x for x in scores) / len(scores)) if scores else 0.0
        for i, (a, b) in enumerate(zip(src, fv)):
            if (a[0], a[1]) != (b[0], b[1]):
                # two heads whose scores are within the tolerance may trade ranks; well-separated ones may not
                swap_ok = heads_swap_ok(a, b, tol, head_effects, scale)
                if swap_ok:
                    detail.append(f"heads {a[:2]} and {b[:2]} trade rank {i}; their mean indirect effects differ by "
                                  f"less than the tolerance")
                    continue
                count += 1
                mism.append(Mismatch(stage, file, f"[{i}]", None, a, b))
            elif not tol.close(float(b[2]), float(a[2]), scale):
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
        for line in json_norm_problems(src, fv, tol):
            mism.append(Mismatch(stage, file, "norm", None, line, "see the elementwise differences"))
            detail.append(line)
        count = len(mism)
        max_abs = max_float_diff(src, fv)
    if stage not in ("mean_activations", "indirect_effect", "fv") and mism:
        keys = sorted({m.trial_key for m in mism if m.trial_key}, key=lambda k: trial_keys.index(k) if k in trial_keys else len(trial_keys))
        if keys:
            pattern = f"{len(mism)} differences in {len(keys)} of {len(trial_keys)} trials ({', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''})"
    status = "PASS" if count == 0 else "FAIL"
    nf = nonfinite_report(stage, src, fv, trial_keys, slot_labels)
    if nf is not None:  # a NaN or an infinity agrees with nothing: the stage has a status of its own
        status = NONFINITE
        count = max(count, max((d["count"] for d in (nf["fv"], nf["reference"]) if d), default=1))
        line = nonfinite_line(stage, nf)
        detail.insert(0, line)
        first = nf["fv"] or nf["reference"]
        mism.insert(0, Mismatch(stage, file, f"non-finite at {nf['where']}", nf["trial"] if nf["trial"] in trial_keys else None,
                                (nf["reference"] or {}).get("value", "finite"), (nf["fv"] or {}).get("value", "finite")))
        pattern = f"{first['value']} first at {nf['where']} ({nf['side']})"
    return StageResult(stage, status, count, max_abs, max_rel, duration, mism, per_trial, detail,
                       worst, pattern, nonfinite=nf)


@dataclass
class ParityResult:
    stages: list[StageResult]
    meta: dict

    @property
    def status(self) -> str:
        # SKIP: a stage the golden source does not hold (user goldens hold three); never all of them.
        # NONFINITE: any stage holds a NaN or an infinity, whatever the others say
        compared = [s for s in self.stages if s.status != SKIP]
        if any(s.status == NONFINITE for s in compared):
            return NONFINITE
        return "PASS" if compared and all(s.status == "PASS" for s in compared) else "FAIL"

    @property
    def earliest_failed_stage(self) -> str | None:
        return next((s.name for s in self.stages if s.status in FAILED_STATUSES), None)

    @property
    def nonfinite_stages(self) -> list[str]:
        return [s.name for s in self.stages if s.status == NONFINITE]

    @property
    def degenerate_stages(self) -> dict[str, str]:
        return {s.name: s.degenerate for s in self.stages if s.degenerate and s.status == "PASS"}

    @property
    def proves_little(self) -> str | None:
        """One line when every effect stage compared (indirect effects, top heads) passed only degenerately."""
        effects = [s for s in self.stages if s.name in EFFECT_STAGES and s.status != SKIP]
        if not effects or not all(s.status == "PASS" and s.degenerate for s in effects):
            return None
        return ("every compared effect is degenerate (" + "; ".join(f"{s.name}: {s.degenerate}" for s in effects)
                + "): this gate proves little about the indirect effects and the heads they rank")

    def stage(self, name: str) -> StageResult:
        return next(s for s in self.stages if s.name == name)

    def first_divergence(self) -> dict | None:
        """The first mismatch in stage order, then trial order, then index order."""
        for s in self.stages:
            if s.mismatches:
                return {**s.mismatches[0].as_dict(), "pattern": s.pattern, "reference_function": s.reference_function,
                        **({"status": s.status, "nonfinite": s.nonfinite} if s.nonfinite else {})}
        return None


def probability_scale(values: dict) -> tuple[float, float]:
    """``(L, p_max)`` of a side's stage values, over its injection stage's shuffled prompts (the indirect effect's
    corrupted prompts): the largest clean top logit, and the largest probability an indirect effect there is a
    difference of (the clean target probability plus the largest effect); (0.0, 0.0) when it holds no injection."""
    big, p = 0.0, 0.0
    injection = values.get("injection")
    for entry in injection.values() if isinstance(injection, dict) else ():
        score = entry.get("shuffled") if isinstance(entry, dict) else None  # the effects' own (corrupted) prompts
        base = score.get("base") if isinstance(score, dict) else None
        if not isinstance(base, dict):
            continue
        for x in base.get("top_logits") or []:
            if isinstance(x, (int, float)) and math.isfinite(float(x)):
                big = max(big, abs(float(x)))
        if isinstance(base.get("prob"), (int, float)) and math.isfinite(float(base["prob"])):
            p = max(p, float(base["prob"]))
    ie = values.get("indirect_effect")
    if isinstance(ie, torch.Tensor) and ie.numel():
        p += float(ie.detach().to(torch.float64).abs().max())
    return big, min(p, 1.0)


def _dtype_eps(tol: Tolerance, meta: dict, dtype: torch.dtype | None) -> float:
    """The machine epsilon of the dtype the model computes in: ``dtype``, else the meta's, else the tolerance's."""
    if dtype is None and isinstance(meta.get("dtype"), str):
        dtype = getattr(torch, meta["dtype"], None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return float(torch.finfo(dtype).eps)
    return tol.eps


def compare_all(src: Any, fv: Any, tol: Tolerance, trial_keys: list[str], meta: dict,
                stage_functions: dict[str, str] | None = None, dtype: torch.dtype | None = None,
                lone_slots: Sequence[int] | None = None) -> ParityResult:
    """Every stage in order; ``src`` and ``fv`` are ``StageValues``. Slot labels and multi-token word slots
    come from the source's slot stage, so a mean-activation mismatch can be described by slot. A stage where
    either side holds a NaN or an infinity is NONFINITE; a PASS is marked ``degenerate`` when its expected
    values cannot tell a right computation from a wrong one (``degenerate_reason``; ``dtype``: the model's
    compute dtype, else the meta's). ``lone_slots``: the slots a lone SentencePiece ``▁`` token is averaged into,
    named in a mean-activation mismatch's pattern (``fv.parity.pattern.lone_metaspace_slot_indices``)."""
    slot = src.values.get("slot") or {}
    labels = [str(l) for _p, l in slot.get("dummy_labels", [])] or None
    multi = multi_token_slots(slot) if slot else None
    stages = []
    scale, p_max = probability_scale(src.values)
    for s in STAGES:
        if s not in src.values:
            stages.append(StageResult(s, SKIP, 0, 0.0, detail=[f"not compared: the golden source holds no {s}"]))
            continue
        st = tol.for_stage(s)
        if s in ("indirect_effect", "top_heads") and scale:
            st = st.with_probability_floor(scale, p_max)  # effects are differences of probabilities: their rounding floor
        r = compare_stage(s, src.values[s], fv.values[s], st, trial_keys, fv.durations.get(s, 0.0) + src.durations.get(s, 0.0),
                          labels, multi, src.values.get("indirect_effect") if s == "top_heads" else None, lone_slots)
        r.reference_function = (stage_functions or {}).get(s, "")
        eps = _dtype_eps(tol, meta, dtype)
        r.magnitude = value_magnitude(s, src.values[s], eps, p_max)
        if r.status == "PASS":
            r.degenerate = degenerate_reason(s, src.values[s], st, eps, p_max,
                                             src.values.get("indirect_effect") if s == "top_heads" else None)
        stages.append(r)
    return ParityResult(stages, meta)
