"""Fast mode on a float16 model against the live reference (issue: "fast mode holds in float16").

A random float16 model gives indirect effects at float16's resolution floor: many heads tie, and fast mode's
effects (computed in another order) may pick another head among tied ones at the top-k boundary. That is not a
difference between the two computations, but the FV of the other list differs by a whole head, and so does the
injection. The gate then compares fv's FV and injection with the reference's own ``compute_function_vector`` and
``function_vector_intervention`` fed fv's head list (``fv.parity.run._refit_on_tied_heads``), and says so.

The model is one the project never saw (built here, its own seed and shape), named without a size word so the
reference's rule loads it in float16.
"""

from __future__ import annotations

import math

import pytest
import torch

from fv.model.loading import load_model
from fv.model.tiny import TinySpec, build_tiny_model
from fv.parity.run import run_parity
from fv.parity.stages import Params
from fv.paths import FIXTURES
from fv.runtime.trials import load_trials, make_icl_trials, save_trials

pytestmark = pytest.mark.m2


@pytest.fixture(scope="module")
def fp16_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp16gate")
    path = build_tiny_model(TinySpec("user-llama", "fixture", n_layers=8, d_model=96, n_heads=6, n_kv_heads=2, d_mlp=192,
                                     seed=777), root / "my-llama-small")
    lm = load_model(str(path), "cpu", "auto")
    assert lm.dtype == torch.float16, lm.loading_rule  # the reference's rule: no size word, float16
    ft = root / "trials.json"
    save_trials(ft, make_icl_trials(FIXTURES / "data" / "country-capital.json", lm.tokenizer, 4, 5, 0, model_prepend_bos=lm.prepend_bos))
    return lm, load_trials(ft)


def test_fast_fp16_passes_against_the_reference_with_tied_heads_refit(fp16_setup, reference, tmp_path):
    from fv.reference.stages import STAGE_FUNCTIONS, live_source

    lm, trials = fp16_setup
    params = Params(n_top_heads=10, edit_layer=2, max_trials=4, mode="fast")
    source = live_source(reference)
    run = run_parity(lm, trials, params, source, tmp_path / "reports", stage_functions=STAGE_FUNCTIONS)
    table = "; ".join(f"{s.name} {s.status} {s.mismatch_count} {s.max_abs_diff}" for s in run.result.stages)
    assert run.tolerance.name == "fp16", table
    compared = [s for s in run.result.stages if not (s.name == "injection" and run.injection_error)]
    assert all(s.mismatch_count == 0 for s in compared), table
    assert all(math.isfinite(float(s.max_abs_diff)) for s in compared), f"an overflow or an id counted as a size: {table}"
    src_heads = [tuple(h[:2]) for h in run.src.values["top_heads"]]
    fv_heads = [tuple(h[:2]) for h in run.fv.values["top_heads"]]
    notes = run.result.meta.get("src_notes", [])
    refit = [n for n in notes if n.startswith("top heads: fv's list differs")]
    if src_heads == fv_heads:
        assert not refit, notes
        return
    # the heads traded places among ties: the note names them, and without the refit the FV would not compare
    assert len(refit) == 1 and all(f"L{l}H{h}" in refit[0] for l, h in set(src_heads) ^ set(fv_heads)), notes
    source.refit = None
    bare = run_parity(lm, trials, params, source, None, fv_values=run.fv, stage_functions=STAGE_FUNCTIONS)
    assert not torch.equal(bare.src.values["fv"], run.src.values["fv"]), "the refit FV is the reference's own list's FV"
    bare_fv = next(s for s in bare.result.stages if s.name == "fv")
    print(f"heads traded: {sorted(set(src_heads) ^ set(fv_heads))}; fv against the reference's own list: {bare_fv.status} "
          f"(max abs diff {bare_fv.max_abs_diff:.3g}); against its FV for fv's list: PASS")
