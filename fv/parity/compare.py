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
from typing import Any, Sequence

import torch

from fv.parity.comparers import (  # noqa: F401  (the comparers' parts, read here by name too)
    DEGENERATE_EPS_MULTIPLE,
    Context,
    comparer_for,
    heads_swap_ok,
)
from fv.parity.json_diff import (  # noqa: F401  (the comparison's parts, read here by name too)
    field_scales,
    float_fields,
    json_norm_problems,
    max_float_diff,
    walk_diffs,
)
from fv.parity.mismatch import Mismatch
from fv.parity.pattern import multi_token_slots
from fv.parity.registry import EFFECT_STAGES, STAGE_DIMS, STAGE_FILES, STAGES  # noqa: F401
from fv.parity.registry import stage as registry_stage
from fv.parity.tensor_diff import TensorDiff, diff_tensors  # noqa: F401
from fv.parity.tolerance import BF16, EXACT, FP16, FP32, Tolerance, rms, tolerance_for  # noqa: F401

SKIP = "SKIP"  # a stage's status when the other side has no value for it
NOT_COMPARED = "NOT COMPARED"  # a gate whose compared stages passed but whose port lacks some stages
NONFINITE = "NONFINITE"  # a stage where either side holds a NaN or an infinity: never a PASS, never a mere FAIL
FAILED_STATUSES = ("FAIL", NONFINITE)

def _context(trial_keys: Sequence[str] = (), slot_labels: Sequence[str] | None = None, **kw: Any) -> Context:
    return Context(trial_keys=tuple(trial_keys), slot_labels=slot_labels, **kw)


def side_nonfinite(stage: str, value: Any, trial_keys: Sequence[str] = (), slot_labels: Sequence[str] | None = None
                   ) -> dict | None:
    """Where one side's value of ``stage`` first holds a NaN or an infinity: ``{"where", "index", "value", "count",
    "trial"}`` (``where`` in words: "trial t:0, layer 3, head 1", "rank 2 (layer 4, head 0)", a JSON path), or None."""
    st = registry_stage(stage)
    return comparer_for(st, value).nonfinite(st, value, _context(trial_keys, slot_labels))


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
    median (any order of them would pass). Judged on ``src``, the expected side, by the stage's comparer."""
    st = registry_stage(stage)
    return comparer_for(st, src).degenerate(st, src, tol, Context(eps=eps, p_max=p_max, ranked_by=head_effects))


def value_magnitude(stage: str, src: Any, eps: float = 0.0, p_max: float = 0.0) -> dict | None:
    """How large a tensor stage's expected values are: ``max_abs`` and ``rms``; for indirect effects also the
    probability they are differences of (``p_max``) and the rounding step ``eps * p_max`` it is held against."""
    if not isinstance(src, torch.Tensor) or not src.numel():
        return None
    x = src.detach().to("cpu", torch.float64).reshape(-1)
    x = x[torch.isfinite(x)]
    out = {"max_abs": float(x.abs().max()) if x.numel() else math.nan, "rms": rms(x)}
    if registry_stage(stage).effect and eps > 0 and p_max > 0:
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
    lacked_by: str | None = None  # SKIP: "ours" when fv's side (a port) lacks the stage, "other" when the other side does

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


def compare_stage(stage: str, src: Any, fv: Any, tol: Tolerance, trial_keys: list[str], duration: float = 0.0,
                  slot_labels: Sequence[str] | None = None, multi_slots: Sequence[int] | None = None,
                  head_effects: torch.Tensor | None = None, lone_slots: Sequence[int] | None = None) -> StageResult:
    """One stage's verdict, by the comparer of its kind of value (``fv.parity.comparers``). Keys of per-trial stages
    must match one to one; a missing or extra one is a mismatch.

    Mismatches are listed in trial order, then index order, so the first one is the first place the sides part;
    the largest difference is reported apart, as ``worst``; ``pattern`` says where the mismatches fall (slots by
    label, the multi-token word slots ``multi_slots``, and the slots a lone SentencePiece ``▁`` is averaged into,
    ``lone_slots``). ``head_effects``: the src's values the stage is ranked by (``Stage.ranked_by``).
    """
    st = registry_stage(stage)
    ctx = _context(trial_keys, slot_labels, multi_slots=multi_slots, lone_slots=lone_slots, ranked_by=head_effects)
    out = comparer_for(st, src if isinstance(src, torch.Tensor) else fv).diff(st, src, fv, tol, ctx)
    status, count, pattern, mism, detail = "PASS" if out.count == 0 else "FAIL", out.count, out.pattern, out.mismatches, out.detail
    nf = nonfinite_report(stage, src, fv, trial_keys, slot_labels)
    if nf is not None:  # a NaN or an infinity agrees with nothing: the stage has a status of its own
        status = NONFINITE
        count = max(count, max((d["count"] for d in (nf["fv"], nf["reference"]) if d), default=1))
        detail.insert(0, nonfinite_line(stage, nf))
        first = nf["fv"] or nf["reference"]
        mism.insert(0, Mismatch(stage, st.file, f"non-finite at {nf['where']}", nf["trial"] if nf["trial"] in trial_keys else None,
                                (nf["reference"] or {}).get("value", "finite"), (nf["fv"] or {}).get("value", "finite")))
        pattern = f"{first['value']} first at {nf['where']} ({nf['side']})"
    return StageResult(stage, status, count, out.max_abs, out.max_rel, duration, mism, out.per_trial, detail,
                       out.worst, pattern, nonfinite=nf)


@dataclass
class ParityResult:
    stages: list[StageResult]
    meta: dict

    @property
    def status(self) -> str:
        # SKIP: a stage the golden source does not hold (user goldens hold three); never all of them.
        # NONFINITE: any stage holds a NaN or an infinity, whatever the others say
        # NOT_COMPARED: every compared stage passed but fv's side (a port) lacks some: never a PASS
        compared = [s for s in self.stages if s.status != SKIP]
        if any(s.status == NONFINITE for s in compared):
            return NONFINITE
        if not compared or not all(s.status == "PASS" for s in compared):
            return "FAIL"
        return NOT_COMPARED if self.lacked_by_ours else "PASS"

    @property
    def lacked_by_ours(self) -> list[str]:
        """The stages fv's side (a port) does not compute: a gate on it says "not compared: N of M stages"."""
        return [s.name for s in self.stages if s.status == SKIP and s.lacked_by == "ours"]

    @property
    def not_compared_line(self) -> str | None:
        """``not compared: N of M stages (...)`` when fv's side lacks stages; None otherwise."""
        lacking = self.lacked_by_ours
        return (f"not compared: {len(lacking)} of {len(self.stages)} stages ({', '.join(lacking)}): the port does not "
                "compute them") if lacking else None

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
        decl = registry_stage(s)
        if s not in src.values or s not in fv.values:  # a side that lacks a stage: not compared, never a PASS
            which = "the golden source" if s not in src.values else "this side"
            stages.append(StageResult(s, SKIP, 0, 0.0, detail=[f"not compared: {which} holds no {s}"],
                                      lacked_by="other" if s not in src.values else "ours"))
            continue
        st = tol.for_stage(s)
        if decl.effect and scale:
            st = st.with_probability_floor(scale, p_max)  # effects are differences of probabilities: their rounding floor
        ranked_by = src.values.get(decl.ranked_by) if decl.ranked_by else None
        r = compare_stage(s, src.values[s], fv.values[s], st, trial_keys, fv.durations.get(s, 0.0) + src.durations.get(s, 0.0),
                          labels, multi, ranked_by, lone_slots)
        r.reference_function = (stage_functions or {}).get(s, "")
        eps = _dtype_eps(tol, meta, dtype)
        r.magnitude = value_magnitude(s, src.values[s], eps, p_max)
        if r.status == "PASS":
            r.degenerate = degenerate_reason(s, src.values[s], st, eps, p_max, ranked_by)
        stages.append(r)
    return ParityResult(stages, meta)
