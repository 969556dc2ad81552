"""The named tolerances (fv/parity/tolerance.py, docs/tolerances.md): the dtype picks them, the exact gate stays at
0.0, the RMS-scaled allowance spares near-zero elements, the norm-wise check catches what the elementwise one lets
through, top heads trade ranks only when the src cannot tell them apart, and every golden records its numerics."""

from __future__ import annotations

import json

import pytest
import torch

from fv.parity.compare import BF16, EXACT, FP16, FP32, compare_stage, diff_tensors, tolerance_for
from fv.paths import SNAPSHOT_ROOT


def test_tolerance_follows_the_compute_dtype():
    assert tolerance_for(torch.float32, exact=True) is EXACT and EXACT.is_exact
    assert (EXACT.atol, EXACT.rtol, EXACT.rms_atol) == (0.0, 0.0, 0.0)
    assert tolerance_for(torch.float32, exact=False) is FP32
    assert tolerance_for(torch.float16, exact=False) is FP16
    assert tolerance_for(torch.bfloat16, exact=False) is BF16
    for tol in (FP32, FP16, BF16):
        assert "docs/tolerances.md" in tol.origin and tol.rms_atol > 0 and tol.norm_rtol > 0
        assert tol.atol == torch.finfo({"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[tol.name]).tiny
    assert FP32.rms_atol < FP16.rms_atol < BF16.rms_atol
    assert FP16.for_stage("mean_activations").rms_atol == 0.25 and FP16.for_stage("fv").rms_atol == FP16.rms_atol


def test_exact_stays_bit_for_bit():
    x = torch.linspace(-1, 1, 101)
    y = x.clone()
    y[50] = torch.nextafter(y[50], torch.tensor(1.0))
    assert diff_tensors(x, y, EXACT).n_mismatch == 1 and not diff_tensors(x, x.clone(), EXACT).failed


def test_allowance_scales_with_rms_not_the_element():
    """A near-zero element keeps its neighbours' absolute error: within 2e-3 x rms it passes in fp32, where a
    relative rule (the old atol 1e-5 + rtol 1e-4) failed; past it, it fails."""
    g = torch.tensor([3.0, -2.0, 1e-6, 2.5], dtype=torch.float64)
    rms = float(g.pow(2).mean().sqrt())
    near = g.clone()
    near[2] += 0.5 * FP32.rms_atol * rms
    assert not diff_tensors(g, near, FP32).n_mismatch
    far = g.clone()
    far[2] += 1.5 * FP32.rms_atol * rms
    d = diff_tensors(g, far, FP32)
    assert d.n_mismatch == 1 and d.first_index == (2,)


def test_norm_check_catches_a_spread_change():
    """Every element of a uniform [-1, 1] tensor scaled by 0.975 stays inside fp16's elementwise allowance
    (0.05 x rms = 0.029 > 0.025), not inside its norm bound (0.02 < 0.025): the norm-wise check alone catches it."""
    g = torch.rand(2000, generator=torch.Generator().manual_seed(0)) * 2 - 1
    d = diff_tensors(g, g * 0.975, FP16)
    assert d.n_mismatch == 0 and d.norm_fail and d.failed
    assert any("norm-wise check failed" in line for line in d.lines(FP16))
    r = compare_stage("fv", g, g * 0.975, FP16, [])
    assert r.status == "FAIL" and r.mismatches[0].key == "norm"
    assert compare_stage("fv", g, g * 0.999, FP16, []).status == "PASS"


def test_injection_fields_scale_and_norm():
    src = {"0:0": {"zero_shot": {"logit": 10.0, "prob": 1e-7, "top_logits": [12.0, 11.0]}}}
    ok = {"0:0": {"zero_shot": {"logit": 10.2, "prob": 2e-7, "top_logits": [12.1, 11.0]}}}
    bad = {"0:0": {"zero_shot": {"logit": 12.0, "prob": 1e-7, "top_logits": [12.0, 11.0]}}}
    assert compare_stage("injection", src, ok, FP16, ["0:0"]).status == "PASS"
    r = compare_stage("injection", src, bad, FP16, ["0:0"])
    assert r.status == "FAIL" and any("logit" in m.key for m in r.mismatches)
    assert compare_stage("injection", src, ok, EXACT, ["0:0"]).status == "FAIL"


def test_top_heads_trade_ranks_only_when_inseparable():
    effects = torch.zeros(2, 2, 2)
    src = [[0, 0, 0.0], [1, 1, 0.0]]
    swapped = [[1, 1, 0.0], [0, 0, 0.0]]
    effects[:, 0, 0], effects[:, 1, 1] = 2e-5, 1e-5  # well separated next to fp32's allowance (2e-3 x rms)
    assert compare_stage("top_heads", src, swapped, FP32, [], head_effects=effects).status == "FAIL"
    effects[:, 1, 1] = 2e-5 * (1 - 1e-4)  # inseparable
    r = compare_stage("top_heads", src, swapped, FP32, [], head_effects=effects)
    assert r.status == "PASS" and "trade rank" in r.detail[0]
    assert compare_stage("top_heads", src, swapped, EXACT, [], head_effects=effects).status == "FAIL"


META = sorted(SNAPSHOT_ROOT.glob("*/*/t*.meta.json"))


@pytest.mark.parametrize("meta", META, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}/{p.stem}")
def test_golden_meta_records_its_numerics(meta):
    """Each golden says what it was written under: CPU kernels, threads, versions (docs/tolerances.md)."""
    m = json.loads(meta.read_text())
    if m.get("imported_from"):
        pytest.skip("imported from a user's goldens")
    n = m.get("numerics")
    assert n, f"{meta}: no numerics; regenerate with the README's golden command"
    assert n["cpu_capability"] and int(n["torch_num_threads"]) >= 1
    for k in ("torch_version", "transformers_version", "numpy_version", "blas", "onednn", "env"):
        assert k in n, f"{meta}: numerics lack {k}"
    assert m["replay_tolerance"]["name"] == {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[m["dtype"]]


def test_near_tied_top_ids_may_trade_ranks_others_may_not():
    """Injection's ranked token ids: two ids whose src logits are within the tolerance may trade ranks (seen on
    tiny-gpt-neox under the portable kernels); a trade of separated logits is a mismatch, and exact allows none."""
    src = {"0:0": {"base": {"pred_id": 1, "top_ids": [1, 2, 3], "top_logits": [10.0, 9.99, 5.0]}}}
    near = {"0:0": {"base": {"pred_id": 2, "top_ids": [2, 1, 3], "top_logits": [10.0, 9.99, 5.0]}}}
    far = {"0:0": {"base": {"pred_id": 1, "top_ids": [1, 3, 2], "top_logits": [10.0, 9.99, 5.0]}}}
    assert compare_stage("injection", src, near, FP16, ["0:0"]).status == "PASS"
    r = compare_stage("injection", src, far, FP16, ["0:0"])
    assert r.status == "FAIL" and r.mismatches[0].key.endswith("top_ids[1]")
    assert compare_stage("injection", src, near, EXACT, ["0:0"]).status == "FAIL"


def test_probability_floor_follows_the_logits_and_probabilities():
    """Indirect effects are differences of probabilities: their floor is one rounding step of the largest logit per
    probability, scaled by p (1 - p) <= min(p, 1/4); never below the dtype's own atol, never on the exact gate."""
    from fv.parity.compare import EXACT, FP16, FP32, probability_scale

    t = FP16.with_probability_floor(16.0, 0.5)
    assert t.atol == 2 * torch.finfo(torch.float16).eps * 16.0 * 0.25 and t.name == "fp16/p"
    assert FP16.with_probability_floor(16.0, 0.01).atol == 2 * torch.finfo(torch.float16).eps * 16.0 * 0.01
    assert FP16.with_probability_floor(16.0, 1e-9) is FP16  # below the dtype's smallest normal: unchanged
    assert EXACT.with_probability_floor(16.0, 0.5) is EXACT
    assert FP32.with_probability_floor(19.0, 1e-3).atol < 1e-8
    score = {"base": {"top_logits": [12.0, -3.0], "prob": 0.2}}
    zero = {"base": {"top_logits": [40.0], "prob": 0.9}}  # the zero-shot prompt is not an effect's prompt
    values = {"injection": {"0:0": {"shuffled": score, "zero_shot": zero}},
              "indirect_effect": torch.tensor([[[0.05, -0.1]]])}
    assert probability_scale(values) == (12.0, pytest.approx(0.3))
    assert probability_scale({}) == (0.0, 0.0)
