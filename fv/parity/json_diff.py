"""The comparison of two JSON-like values (prompts, slot maps, injection scores): identities (strings, ids, labels)
exactly, floats under a tolerance whose rms term is the scale of the field they sit in.

The walk knows no field by name: a kind of JSON value whose fields need their own rule (a scored prompt's ranked
token ids and logits hash: ``fv.parity.score_diff``) hands ``walk_diffs`` its ``rules``, one per field name.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Iterator, Mapping

from fv.parity.tolerance import EXACT, Tolerance

# a field's own rule: (src's dict, fv's dict, the field, tolerance, field scales, path) -> the differences, or None
# to compare the field as any other
FieldRule = Callable[[dict, dict, str, Tolerance, dict, str], "Iterator[tuple[str, Any, Any, float]] | None"]


def _field(path: str) -> str:
    """The JSON field a path ends in, list indices dropped: ``0:1.zero_shot.base.top_logits[3]`` -> ``top_logits``."""
    return re.sub(r"\[\d+\]", "", path).rsplit(".", 1)[-1]


def float_fields(value: Any, path: str = "") -> dict[str, list[float]]:
    """Every finite float of a JSON-like structure, grouped by the field it sits in (``logit``, ``prob``, ...): the
    scales of the tolerance's rms term and the norm check. A NaN or an infinity is left out here, never silently
    passed: ``side_nonfinite`` finds it and ``compare_stage`` makes the stage NONFINITE."""
    out: dict[str, list[float]] = {}

    def walk(v: Any, p: str) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, f"{p}.{k}" if p else str(k))
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                walk(x, f"{p}[{i}]")
        elif isinstance(v, float) and math.isfinite(v):
            out.setdefault(_field(p), []).append(v)

    walk(value, path)
    return out


def field_scales(value: Any) -> dict[str, float]:
    """RMS per JSON field: the scale of the tolerance's rms term for each float of that field."""
    return {k: math.sqrt(sum(x * x for x in xs) / len(xs)) for k, xs in float_fields(value).items() if xs}


def json_norm_problems(src: Any, fv: Any, tol: Tolerance) -> list[str]:
    """The norm-wise check per JSON field (the floats of one field, as one vector); empty when it holds."""
    if tol.is_exact or tol.norm_rtol <= 0:
        return []
    a, b = float_fields(src), float_fields(fv)
    out = []
    for k, xs in a.items():
        ys = b.get(k, [])
        if len(ys) != len(xs):
            continue  # the elementwise walk reports the structure's difference
        dn = math.sqrt(sum((x - y) ** 2 for x, y in zip(xs, ys)))
        n = math.sqrt(sum(x * x for x in xs))
        if not tol.norm_ok(dn, n, len(xs)):
            out.append(f"field {k}: ||fv - src|| / ||src|| = {dn / n if n else math.inf:.3g} > {tol.norm_rtol:.3g} (norm-wise check)")
    return out


def walk_diffs(src: Any, fv: Any, tol: Tolerance, path: str = "", scales: dict[str, float] | None = None,
               rules: Mapping[str, FieldRule] | None = None) -> Iterator[tuple[str, Any, Any, float]]:
    """Yield ``(path, src, fv, abs_diff)`` where two JSON-like structures disagree; floats within ``tol`` agree,
    the rms term scaled by the RMS of the src's floats in the same field (``field_scales``). ``rules``: fields
    compared by a rule of their own (``FieldRule``), wherever they sit."""
    if scales is None:
        scales = field_scales(src) if tol.rms_atol else {}
    if isinstance(src, dict) and isinstance(fv, dict):
        for k in list(src) + [k for k in fv if k not in src]:
            p = f"{path}.{k}" if path else str(k)
            if k not in fv:
                yield p, src[k], "<missing>", math.inf
            elif k not in src:
                yield p, "<missing>", fv[k], math.inf
            else:
                own = rules[k](src, fv, k, tol, scales, p) if rules and k in rules else None
                yield from own if own is not None else walk_diffs(src[k], fv[k], tol, p, scales, rules)
    elif isinstance(src, (list, tuple)) and isinstance(fv, (list, tuple)):
        if len(src) != len(fv):
            yield f"{path}.len", len(src), len(fv), math.inf
        for i, (a, b) in enumerate(zip(src, fv)):
            yield from walk_diffs(a, b, tol, f"{path}[{i}]", scales, rules)
    elif isinstance(src, float) or isinstance(fv, float):
        if isinstance(src, (int, float)) and isinstance(fv, (int, float)) and not isinstance(src, bool):
            if not tol.close(float(fv), float(src), scales.get(_field(path), 0.0)):
                yield path, src, fv, abs(float(src) - float(fv))
        else:
            yield path, src, fv, math.inf
    elif src != fv:
        yield path, src, fv, math.inf


def max_float_diff(src: Any, fv: Any) -> float:
    """Largest abs difference between matching floats of two structures (0.0 when none differ); token ids and
    other integers are labels, not magnitudes, and count only as mismatches."""
    worst = 0.0
    for _p, a, b, _d in walk_diffs(src, fv, EXACT):
        if (isinstance(a, float) or isinstance(b, float)) and isinstance(a, (int, float)) and isinstance(b, (int, float)) \
                and not isinstance(a, bool) and not isinstance(b, bool):
            worst = max(worst, abs(float(a) - float(b)))
    return worst
