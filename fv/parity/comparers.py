"""One comparer per kind of value a stage holds, chosen by the stage's ``compared_as`` in ``fv.parity.registry``:
tensors, ranked heads, JSON, and scored prompts (JSON with ranked token ids and a logits hash). No comparer reads a
stage's name: what it needs of a stage (its dims, whether its values are effects, where its trials sit, what ranks
it) is the stage's declaration.

Each comparer answers three questions about one stage: where the two sides differ (``diff``), where a side first
holds a NaN or an infinity (``nonfinite``), and why a PASS would prove little (``degenerate``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch

from fv.parity.json_diff import FieldRule, json_norm_problems, max_float_diff, walk_diffs
from fv.parity.mismatch import Mismatch
from fv.parity.pattern import describe
from fv.parity.registry import Stage
from fv.parity.score_diff import SCORE_RULES
from fv.parity.tensor_diff import diff_tensors
from fv.parity.tolerance import Tolerance, rms

# an indirect effect no larger than this many eps x p (p: the probability it is a difference of) is rounding noise
DEGENERATE_EPS_MULTIPLE = 4.0


@dataclass(frozen=True)
class Context:
    """What a comparison knows beside the two values: the trial keys (``"<trial_id>:<trial_idx>"``, in trial order),
    the slot labels and the multi-token word slots (from the src's slot stage), the slots a lone SentencePiece
    ``▁`` is averaged into, the src's values this stage is ranked by (``Stage.ranked_by``), and the machine epsilon
    of the compute dtype with the largest probability an effect is a difference of (``eps``, ``p_max``)."""

    trial_keys: Sequence[str] = ()
    slot_labels: Sequence[str] | None = None
    multi_slots: Sequence[int] | None = None
    lone_slots: Sequence[int] | None = None
    ranked_by: Any = None
    eps: float = 0.0
    p_max: float = 0.0


@dataclass
class Outcome:
    """Where two values of one stage differ: the mismatch count, the mismatches in trial then index order, the
    count per trial, lines of detail, the largest abs and rel difference, the worst place and a line saying where
    the mismatches fall."""

    count: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    per_trial: dict[str, int] = field(default_factory=dict)
    detail: list[str] = field(default_factory=list)
    max_abs: float = 0.0
    max_rel: float = 0.0
    worst: dict | None = None
    pattern: str = ""


def _per_trial(stage: Stage, ctx: Context) -> dict[str, int]:
    return {k: 0 for k in ctx.trial_keys} if stage.per_trial else {}


def _trials_line(mism: list[Mismatch], trial_keys: Sequence[str]) -> str:
    keys = sorted({m.trial_key for m in mism if m.trial_key},
                  key=lambda k: list(trial_keys).index(k) if k in trial_keys else len(trial_keys))
    if not keys:
        return ""
    return f"{len(mism)} differences in {len(keys)} of {len(trial_keys)} trials ({', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''})"


class TensorComparer:
    """Tensors element by element (``fv.parity.tensor_diff``); a ``"trial"`` dim names the trial of a mismatch, a
    ``"slot"`` dim names slots by label."""

    @staticmethod
    def _trial(stage: Stage, index: Sequence[int], ctx: Context) -> str | None:
        dims = stage.dims or ()
        if "trial" not in dims or len(index) <= dims.index("trial"):
            return None
        t = index[dims.index("trial")]
        return ctx.trial_keys[t] if t < len(ctx.trial_keys) else None

    def diff(self, stage: Stage, src: Any, fv: Any, tol: Tolerance, ctx: Context) -> Outcome:
        d = diff_tensors(src, fv, tol)
        out = Outcome(detail=d.lines(tol), max_abs=d.max_abs, max_rel=d.max_rel, per_trial=_per_trial(stage, ctx))
        if d.shapes_differ:
            out.mismatches.append(Mismatch(stage.name, stage.file, "shape", None, d.src_shape, d.fv_shape))
        elif d.norm_fail and not d.n_mismatch:
            out.mismatches.append(Mismatch(stage.name, stage.file, "norm", None,
                                           "relative norm diff <= " + f"{tol.norm_rtol:.3g}", f"{d.rel_norm:.3g}"))
        elif d.n_mismatch:
            first = list(d.first_index or ())
            out.mismatches.append(Mismatch(stage.name, stage.file, str(first), self._trial(stage, first, ctx),
                                           d.first_src, d.first_fv))
            wi = list(d.worst_index or ())
            out.worst = {"key": str(wi), "trial": self._trial(stage, wi, ctx), "src": d.src_value, "fv": d.fv_value,
                         "abs_diff": d.max_abs}
            out.pattern = describe(stage.dims, d.bad, ctx.slot_labels, ctx.multi_slots, ctx.trial_keys, ctx.lone_slots)
            dims = stage.dims or ()
            if "trial" in dims and d.bad is not None:
                axis = dims.index("trial")
                other = tuple(a for a in range(d.bad.ndim) if a != axis)
                counts = d.bad.sum(dim=other) if other else d.bad
                for t, k in enumerate(list(ctx.trial_keys)[: d.bad.shape[axis]]):
                    out.per_trial[k] = int(counts[t])
        out.count = 1 if d.shapes_differ else d.n_mismatch if d.n_mismatch else int(d.norm_fail)
        return out

    def nonfinite(self, stage: Stage, value: Any, ctx: Context) -> dict | None:
        from fv.runtime.finite import describe_index, first_nonfinite, nonfinite_word

        if not isinstance(value, torch.Tensor):
            return _json_nonfinite(stage, value, ctx)
        hit = first_nonfinite(value)
        if hit is None:
            return None
        idx, x, n = hit
        dims = (stage.dims or ("element",) * max(value.ndim, 1))[: max(value.ndim, 1)]
        labels: dict[str, list[str]] = {}
        if "trial" in dims:
            labels["trial"] = list(ctx.trial_keys)
        if "slot" in dims and ctx.slot_labels:
            labels["slot"] = [f"{i} ({l})" for i, l in enumerate(ctx.slot_labels)]
        return {"where": describe_index(idx, dims, labels), "index": list(idx), "value": nonfinite_word(x), "count": n,
                "n_values": value.numel(), "trial": self._trial(stage, idx, ctx)}

    def degenerate(self, stage: Stage, src: Any, tol: Tolerance, ctx: Context) -> str | None:
        if not isinstance(src, torch.Tensor):
            return None
        x = src.detach().to("cpu", torch.float64).reshape(-1)
        if not x.numel() or not bool(torch.isfinite(x).all()):
            return None
        what = "effects" if stage.effect else "values"
        if x.numel() >= 2 and bool((x == x[0]).all()):
            v = float(x[0])
            return f"all {what} {'0' if v == 0 else repr(v)} ({x.numel()} values)"
        big = float(x.abs().max())
        limit = DEGENERATE_EPS_MULTIPLE * ctx.eps * ctx.p_max
        if stage.effect and limit > 0 and big <= limit:
            return (f"largest |effect| {big:.3g} is at most {DEGENERATE_EPS_MULTIPLE:g} eps x p = {limit:.3g} (eps {ctx.eps:.3g}, "
                    f"p <= {ctx.p_max:.3g}): rounding noise of the probabilities it is a difference of")
        if not tol.is_exact and not diff_tensors(src, torch.zeros_like(src), tol).failed:
            return (f"every |{what[:-1]}| (largest {big:.3g}) is within the tolerance of 0 ({tol.describe()}): "
                    f"a side of zeros would pass as well")
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


class RankedHeadsComparer:
    """``[layer, head, score]`` rows in rank order: the heads exactly (two may trade ranks where the values they
    are ranked by cannot tell them apart within the tolerance), the scores under the tolerance."""

    def diff(self, stage: Stage, src: Any, fv: Any, tol: Tolerance, ctx: Context) -> Outcome:
        out = Outcome(per_trial=_per_trial(stage, ctx))
        scores = [float(h[2]) for h in src]
        scale = math.sqrt(sum(x * x for x in scores) / len(scores)) if scores else 0.0
        effects = ctx.ranked_by if isinstance(ctx.ranked_by, torch.Tensor) else None
        for i, (a, b) in enumerate(zip(src, fv)):
            if (a[0], a[1]) != (b[0], b[1]):
                if heads_swap_ok(a, b, tol, effects, scale):
                    out.detail.append(f"heads {a[:2]} and {b[:2]} trade rank {i}; their mean indirect effects differ "
                                      f"by less than the tolerance")
                    continue
                out.count += 1
                out.mismatches.append(Mismatch(stage.name, stage.file, f"[{i}]", None, a, b))
            elif not tol.close(float(b[2]), float(a[2]), scale):
                out.count += 1
                out.mismatches.append(Mismatch(stage.name, stage.file, f"[{i}].score", None, a[2], b[2]))
            out.max_abs = max(out.max_abs, abs(float(a[2]) - float(b[2])))
        if len(src) != len(fv):
            out.count += 1
            out.mismatches.append(Mismatch(stage.name, stage.file, "len", None, len(src), len(fv)))
        out.pattern = _trials_line(out.mismatches, ctx.trial_keys)
        return out

    def nonfinite(self, stage: Stage, value: Any, ctx: Context) -> dict | None:
        from fv.runtime.finite import nonfinite_word

        if not isinstance(value, (list, tuple)):
            return _json_nonfinite(stage, value, ctx)
        bad = [(i, h) for i, h in enumerate(value) if isinstance(h, (list, tuple)) and len(h) > 2
               and isinstance(h[2], (int, float)) and not math.isfinite(float(h[2]))]
        if not bad:
            return None
        i, h = bad[0]
        return {"where": f"rank {i} (layer {h[0]}, head {h[1]})", "index": [i], "value": nonfinite_word(float(h[2])),
                "count": len(bad), "n_values": len(value), "trial": None}

    def degenerate(self, stage: Stage, src: Any, tol: Tolerance, ctx: Context) -> str | None:
        if not isinstance(src, (list, tuple)) or len(src) < 2:
            return None
        try:
            heads = [(int(h[0]), int(h[1]), float(h[2])) for h in src]
        except (TypeError, ValueError, IndexError):
            return None
        effects = ctx.ranked_by
        if isinstance(effects, torch.Tensor) and effects.ndim == 3:
            m = effects.detach().to("cpu", torch.float64).mean(0)
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
        if spread > allow:
            return None
        if spread == 0:
            return f"the {len(vals)} top heads' {what} are all equal ({med:.3g}): any order of them would pass"
        return (f"the {len(vals)} top heads' {what} all lie within the tolerance ({allow:.3g}) of their median "
                f"{med:.3g} (largest distance {spread:.3g}): any order of them would pass")


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


def trial_of_path(stage: Stage, path: str) -> str | None:
    """The trial key a JSON path of ``stage`` falls in (``Stage.trials_under``), or None."""
    if stage.trials_under is None:
        return None
    parts = path.split(".")
    if stage.trials_under == "":
        return parts[0] or None
    return parts[1] if len(parts) > 1 and parts[0] == stage.trials_under else None


def _json_nonfinite(stage: Stage, value: Any, ctx: Context) -> dict | None:
    from fv.runtime.finite import nonfinite_word

    hits = list(_nonfinite_floats(value))
    if not hits:
        return None
    path, x = hits[0]
    trial = trial_of_path(stage, path)
    return {"where": (f"trial {trial}, " if trial else "") + path, "index": path, "value": nonfinite_word(x),
            "count": len(hits), "n_values": None, "trial": trial}


class JsonComparer:
    """JSON-like values field by field (``fv.parity.json_diff``), with ``rules`` for fields compared their own way;
    a mismatch is named by the trial its path falls in."""

    def __init__(self, rules: Mapping[str, FieldRule] | None = None) -> None:
        self.rules = dict(rules or {})

    def walk(self, src: Any, fv: Any, tol: Tolerance) -> Iterator[tuple[str, Any, Any, float]]:
        """``(path, src, fv, abs_diff)`` where the two values disagree under ``tol``."""
        return walk_diffs(src, fv, tol, rules=self.rules)

    def diff(self, stage: Stage, src: Any, fv: Any, tol: Tolerance, ctx: Context) -> Outcome:
        out = Outcome(per_trial=_per_trial(stage, ctx))
        for path, a, b, _d in self.walk(src, fv, tol):
            tk = trial_of_path(stage, path)
            if tk in out.per_trial:
                out.per_trial[tk] += 1
            out.mismatches.append(Mismatch(stage.name, stage.file, path, tk, a, b))
        for line in json_norm_problems(src, fv, tol):
            out.mismatches.append(Mismatch(stage.name, stage.file, "norm", None, line, "see the elementwise differences"))
            out.detail.append(line)
        out.count = len(out.mismatches)
        out.max_abs = max_float_diff(src, fv)
        out.pattern = _trials_line(out.mismatches, ctx.trial_keys)
        return out

    def nonfinite(self, stage: Stage, value: Any, ctx: Context) -> dict | None:
        return _json_nonfinite(stage, value, ctx)

    def degenerate(self, stage: Stage, src: Any, tol: Tolerance, ctx: Context) -> str | None:
        return None


COMPARERS = {"tensor": TensorComparer(), "ranked_heads": RankedHeadsComparer(), "json": JsonComparer(),
             "scores": JsonComparer(SCORE_RULES)}


def comparer_for(stage: Stage, value: Any = None) -> TensorComparer | RankedHeadsComparer | JsonComparer:
    """The comparer of ``stage``'s kind of value (``Stage.compared_as``); a tensor given for a stage declared JSON, or
    JSON for a tensor stage, is compared as what it is (the shapes then differ, or the walk names the difference)."""
    if isinstance(value, torch.Tensor) and stage.compared_as != "tensor":
        return COMPARERS["tensor"]
    return COMPARERS[stage.compared_as]
