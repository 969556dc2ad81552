"""Non-finite values fail (issue 30, item 1): a NaN or an infinity on either side of a stage is never a PASS and
never a mere FAIL of mismatches, but a stage status of its own, NONFINITE, naming the side and the first layer,
head, slot or trial where it appears; the run's verdict is NONFINITE. ``fv run``, ``fv relation`` and
``fv universal`` stop in one line at the stage that produced it and write nothing of it, and ``fv doctor`` checks
that the model's logits are finite in its dtype. The overflowing model is tiny-llama with layer 0's MLP output
projection scaled by 1e5: its weights still fit float16 (|w| <= 3.5e4), its activations do not."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from fv.cli import main
from fv.parity.compare import EXACT, FP16, FP32, NONFINITE, Tolerance, compare_all, compare_stage, diff_tensors, walk_diffs
from fv.parity.golden import load_goldens
from fv.parity.report import write_parity_reports
from fv.parity.stages import StageValues
from fv.paths import FIXTURES, SNAPSHOT_ROOT
from fv.runtime.finite import NonFiniteError, require_finite, require_finite_rows
from tests.support.terminal import terminal_table

pytestmark = pytest.mark.tiny

GOLDEN = SNAPSHOT_ROOT / "tiny-llama" / "fixed_trials_antonym_tiny_tiny-llama" / "t2"
SCALE = 1e5


@pytest.fixture(scope="module")
def overflow_model(tmp_path_factory) -> Path:
    """tiny-llama whose layer-0 MLP output is 1e5 times larger: finite in float32, inf then NaN in float16."""
    from safetensors.torch import load_file, save_file

    from fv.model.tiny import ensure_tiny_model

    dst = tmp_path_factory.mktemp("overflow") / "tiny-llama-overflow"
    shutil.copytree(ensure_tiny_model("tiny-llama"), dst)
    w = load_file(dst / "model.safetensors")
    key = next(k for k in w if k.endswith("layers.0.mlp.down_proj.weight"))
    w[key] = w[key] * SCALE
    assert float(w[key].abs().max()) < torch.finfo(torch.float16).max  # the weights fit: the activations overflow
    save_file(w, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def _goldens() -> StageValues:
    sv = load_goldens(GOLDEN)
    assert sv is not None
    return sv


def _keys(sv: StageValues) -> list[str]:
    return list(sv.values["injection"])


def _copy(sv: StageValues, **changes) -> StageValues:
    return StageValues(values={**sv.values, **changes})


def _strict_json(path: Path) -> dict:
    def refuse(name):
        raise ValueError(f"{path} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


# ---- the comparison ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tol", [EXACT, FP32, FP16], ids=lambda t: t.name)
def test_nan_against_nan_and_inf_against_inf_never_agree(tol: Tolerance):
    nan, inf = torch.tensor([1.0, math.nan]), torch.tensor([1.0, math.inf])
    assert diff_tensors(nan, nan.clone(), tol).n_mismatch == 1
    assert diff_tensors(inf, inf.clone(), tol).n_mismatch == 1
    assert not tol.close(math.nan, math.nan) and not tol.close(math.inf, math.inf) and not tol.close(-math.inf, -math.inf)
    assert tol.close(1.0, 1.0)
    assert [p for p, *_ in walk_diffs({"a": {"prob": math.nan}}, {"a": {"prob": math.nan}}, tol)] == ["a.prob"]


def test_all_nan_stage_on_both_sides_is_nonfinite_and_the_run_is_not_pass(tmp_path):
    """Before: indirect_effect "PASS, mismatch_count=0, max_abs_diff=nan" and the run PASS. After: NONFINITE, both
    sides, first at the first trial, layer 0, head 0; the run NONFINITE; the report JSON says so (and stays JSON)."""
    g = _goldens()
    nan = torch.full_like(g.values["indirect_effect"], math.nan)
    src, fv = _copy(g, indirect_effect=nan), _copy(g, indirect_effect=nan.clone())
    keys = _keys(g)
    for tol in (EXACT, FP32):
        r = compare_all(src, fv, tol, keys, {"dtype": "float32"})
        st = r.stage("indirect_effect")
        assert st.status == NONFINITE and st.mismatch_count == nan.numel(), st.summary()
        assert st.nonfinite["side"] == "both" and st.nonfinite["where"] == f"trial {keys[0]}, layer 0, head 0"
        assert r.status == NONFINITE and r.earliest_failed_stage == "indirect_effect"
        assert r.first_divergence()["stage"] == "indirect_effect" and r.first_divergence()["nonfinite"]["side"] == "both"
        assert "NONFINITE" in st.summary() and "layer 0, head 0" in st.summary()
    paths = write_parity_reports(tmp_path, r, src.values["injection"], fv.values["injection"])
    report = _strict_json(paths["parity_suite_report.json"])
    assert report["status"] == NONFINITE and report["nonfinite_stages"] == ["indirect_effect"]
    row = next(s for s in report["stages"] if s["name"] == "indirect_effect")
    assert row["status"] == NONFINITE and row["max_abs_diff"] == "nan" and row["nonfinite"]["side"] == "both"
    assert row["nonfinite"]["fv"]["value"] == "NaN" and row["nonfinite"]["fv"]["index"] == [0, 0, 0]


def test_one_side_non_finite_names_the_side_and_the_first_place():
    g = _goldens()
    keys = _keys(g)
    mean = g.values["mean_activations"].clone()
    mean[2, 1, 3, 5] = math.inf
    r = compare_all(g, _copy(g, mean_activations=mean), FP32, keys, {"dtype": "float32"})
    nf = r.stage("mean_activations").nonfinite
    assert r.stage("mean_activations").status == NONFINITE and r.status == NONFINITE
    assert nf["side"] == "fv" and nf["reference"] is None and nf["fv"]["value"] == "+inf"
    assert nf["where"].startswith("layer 2, head 1, slot 3") and nf["fv"]["index"] == [2, 1, 3, 5]
    ie = g.values["indirect_effect"].clone()
    ie[1, 4, 2] = -math.inf
    r = compare_all(_copy(g, indirect_effect=ie), g, EXACT, keys, {"dtype": "float32"})
    nf = r.stage("indirect_effect").nonfinite
    assert nf["side"] == "reference" and nf["where"] == f"trial {keys[1]}, layer 4, head 2" and nf["trial"] == keys[1]


def test_non_finite_json_floats_and_top_head_scores():
    g = _goldens()
    keys = _keys(g)
    inj = json.loads(json.dumps(g.values["injection"]))
    inj[keys[1]]["zero_shot"]["with"]["logprob"] = math.nan
    r = compare_stage("injection", g.values["injection"], inj, FP32, keys)
    assert r.status == NONFINITE and r.nonfinite["side"] == "fv" and r.nonfinite["trial"] == keys[1]
    assert r.nonfinite["where"] == f"trial {keys[1]}, {keys[1]}.zero_shot.with.logprob"
    heads = [list(h) for h in g.values["top_heads"]]
    heads[2][2] = math.nan
    r = compare_stage("top_heads", heads, heads, EXACT, [])
    assert r.status == NONFINITE and r.nonfinite["side"] == "both"
    assert r.nonfinite["where"] == f"rank 2 (layer {heads[2][0]}, head {heads[2][1]})"


def test_finite_values_are_unchanged():
    """PASS stays PASS on finite values, numbers unchanged."""
    g = _goldens()
    r = compare_all(g, g, FP32, _keys(g), {"dtype": "float32"})
    assert r.status == "PASS" and all(s.nonfinite is None for s in r.stages)
    d = diff_tensors(g.values["mean_activations"], g.values["mean_activations"] * (1 + 1e-6), FP32)
    assert d.max_abs > 0 and math.isfinite(d.max_rel) and d.n_mismatch == 0


def test_require_finite_names_the_stage_and_place():
    require_finite("mean activations", torch.zeros(2, 3), ["layer", "head"])
    t = torch.zeros(2, 3, 4)
    t[1, 2, 0] = math.nan
    with pytest.raises(NonFiniteError) as exc:
        require_finite("indirect effect", t, ["trial", "layer", "head"], {"trial": ["(a, 0)", "(a, 1)"]})
    assert str(exc.value).startswith("indirect effect: NaN at trial (a, 1), layer 2, head 0") and "\n" not in str(exc.value)
    assert exc.value.stage == "indirect effect" and exc.value.where == "trial (a, 1), layer 2, head 0"
    rows = [{"trial_id": "a", "trial_idx": 0, "prompt_set": "zero_shot", "logit_base": 1.0, "logit_with": math.inf}]
    with pytest.raises(NonFiniteError, match=r"^evaluation: logit_with is \+inf at edit layer 9, trial \(a, 0\)"):
        require_finite_rows("evaluation", rows, 9)


# ---- the drivers stop --------------------------------------------------------------------------------------

def _one_error_line(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith(f"fv {command}: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_fv_run_stops_at_the_first_non_finite_stage(overflow_model, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["run", "--model", str(overflow_model), "--dtype", "float16", "--device", "cpu", "--max-trials", "2",
               "--out", str(out), "--quiet", "--no-plots"])
    line = _one_error_line(capsys.readouterr().err, "run")
    assert rc == 1 and "mean activations: NaN at layer 1, head 0" in line and "Nothing of this stage was written" in line
    assert not (out / "mean_activations.pt").exists() and not (out / "mean_activations_meta.json").exists()
    assert not list(out.glob("*.pt"))
    # the same model in float32 runs through: the stop is the dtype's overflow, not the scaling
    rc = main(["run", "--model", str(overflow_model), "--dtype", "float32", "--device", "cpu", "--max-trials", "2",
               "--out", str(tmp_path / "run32"), "--quiet", "--no-plots"])
    assert rc == 0 and (tmp_path / "run32" / "mean_activations.pt").is_file()


def test_fv_relation_stops_and_records_the_q(overflow_model, tmp_path, capsys):
    from fv.pipelines.relation import read_status

    rc = main(["relation", "--relation-csv", str(FIXTURES / "relation_tiny.csv"), "--model", str(overflow_model),
               "--dtype", "float16", "--device", "cpu", "--q-list", "Q1,Q2", "--n-trials-per-q", "1", "--edit-layers", "9",
               "--out", str(tmp_path), "--quiet", "--no-plots"])
    line = _one_error_line(capsys.readouterr().err, "relation")
    assert rc == 1 and line.startswith("fv relation: error: q Q1: mean activations: NaN at layer 1"), line
    root = tmp_path / "relation_tiny"
    st = read_status(root, "Q1")
    assert st["status"] == "failed" and "NonFiniteError" in st["error"]
    assert read_status(root, "Q2")["status"] == "pending"  # the run stopped: no other q was started
    assert not list(root.rglob("*.pt")) and not list(root.rglob("aie_scores.csv"))


def test_fv_universal_stops(overflow_model, tmp_path):
    from fv.pipelines.universal import UniversalConfig, run_universal

    cfg = UniversalConfig(out=str(tmp_path), model=str(overflow_model), relation_csv=str(FIXTURES / "relation_tiny.csv"),
                          q_list=["Q1", "Q2"], n_trials_per_q=1, edit_layers="9", device="cpu", dtype="float16")
    with pytest.raises(NonFiniteError, match=r"mean activations: NaN at layer 1, head 0") as exc:
        run_universal(cfg)
    assert "\n" not in str(exc.value)
    assert not list(Path(tmp_path).rglob("*.pt"))


def test_doctor_fails_on_non_finite_logits(overflow_model, capsys):
    rc = main(["doctor", "--model", str(overflow_model), "--dtype", "float16", "--device", "cpu"])
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if "finite logits" in l)
    assert rc == 1 and line.startswith("FAIL finite logits:") and "float16" in line and "--dtype float32" in line, out
    rc = main(["doctor", "--model", str(overflow_model), "--dtype", "float32", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0 and "OK   finite logits:" in out, out


# ---- the terminal table ------------------------------------------------------------------------------------

def test_terminal_table_shows_nonfinite():
    g = _goldens()
    nan = torch.full_like(g.values["indirect_effect"], math.nan)
    r = compare_all(_copy(g, indirect_effect=nan), _copy(g, indirect_effect=nan.clone()), FP32, _keys(g), {"dtype": "float32"})
    lines = terminal_table(r)
    assert any(l.startswith("tiny-x x trials-x: NONFINITE against goldens") for l in lines), lines
    row = next(l for l in lines if l.strip().startswith("indirect_effect"))
    assert "NONFINITE" in row and f"NaN on both sides, first at trial {_keys(g)[0]}, layer 0, head 0" in row, row


@pytest.mark.parametrize("stage", ["fv", "evaluation"])
def test_fv_run_stops_at_a_later_stage_and_writes_nothing_of_it(stage, tmp_path, monkeypatch, capsys):
    """The FV and the evaluation's logits are checked too: a NaN there (forced here on the finite tiny model)
    stops the run in one line, the earlier stages' files stay, and nothing of the stage is written."""
    import fv.pipelines.run as pipeline

    if stage == "fv":
        real = pipeline.function_vector

        def broken(mean, heads, info):
            r = real(mean, heads, info)
            r.by_layer[3, 7] = math.nan
            return r

        monkeypatch.setattr(pipeline, "function_vector", broken)
    else:
        real_eval = pipeline.evaluate_layers

        def broken_eval(*a, **k):
            out = real_eval(*a, **k)
            out[9][1]["logprob_with"] = -math.inf
            return out

        monkeypatch.setattr(pipeline, "evaluate_layers", broken_eval)
    out = tmp_path / "run"
    rc = main(["run", "--model", "tiny-llama", "--device", "cpu", "--max-trials", "2", "--out", str(out), "--quiet",
               "--no-plots"])
    line = _one_error_line(capsys.readouterr().err, "run")
    assert rc == 1
    assert (out / "mean_activations.pt").is_file() and (out / "indirect_effect.pt").is_file()
    if stage == "fv":
        assert "function vector: NaN at layer 3" in line, line
        assert not (out / "fv_global_resid.pt").exists() and not (out / "top_heads.json").exists()
    else:
        assert "evaluation: logprob_with is -inf at edit layer 9, trial" in line, line
        assert (out / "fv_global_resid.pt").is_file() and not list(out.glob("step6_results*")) \
            and not (out / "eval_summary.json").exists()
