"""Benchmark: where users wait. In one process, on one model and one fixed-trials set, times

* the indirect effects: the reference, fv exact, fv fast;
* the whole runtime (prompts and slots, mean activations, indirect effects, top heads, FV, evaluation with
  the FV injected): the reference's pipeline (``fv.reference.stages.src_stage_values``), fv exact, fv fast
  (``fv.parity.stages.fv_stage_values``);
* a repeated exact M2 gate (``fv.parity.run.run_parity`` against the live reference) without the src-values
  cache, and with it once it holds the reference's values (``fv.parity.src_cache``);

and prints one table of seconds and ratios. Tiny model by default; any ``--model`` (a folder or tiny name).

    python benchmarks/bench_pipeline.py --src-root /path/to/src --baukit-root /path/to/baukit --src-compat
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from fv.model.loading import load_model
from fv.parity.run import run_parity
from fv.parity.src_cache import SrcCache
from fv.parity.stages import Params, fv_dummy_labels, fv_stage_values
from fv.paths import FIXTURES
from fv.runtime.activations import mean_head_activations
from fv.runtime.effects import indirect_effects, pad_token_id
from fv.runtime.prepared import prepare_trials
from fv.runtime.trials import load_trials, make_icl_trials, save_trials


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn, reps: int) -> tuple[float, object]:
    """Best of ``reps`` wall-clock seconds (the least disturbed by other load on a shared machine) and the last result."""
    best, out = float("inf"), None
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):  # the reference's progress bars
            out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-llama", help="model folder or tiny model name (default tiny-llama)")
    ap.add_argument("--fixed-trials", default=None, help="fixed-trials JSON (default: 10 trials made from fixtures/antonym_tiny.json)")
    ap.add_argument("--n-trials", type=int, default=10, help="trials (default 10)")
    ap.add_argument("--reps", type=int, default=2, help="repetitions per measurement; the best is kept (default 2)")
    ap.add_argument("--src-root", required=True, help="the reference's src/")
    ap.add_argument("--baukit-root", default=None, help="folder holding baukit/nethook.py when baukit does not import")
    ap.add_argument("--src-compat", action="store_true", help="the reference's FV addition on tensor layer outputs (see fv --help)")
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    ap.add_argument("--edit-layer", type=int, default=None, help="layer the FV is added after (default: a third of the layers)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    a = ap.parse_args(argv)

    from fv.reference.adapter import Reference
    from fv.reference.stages import STAGE_FUNCTIONS, live_source, src_stage_values

    lm = load_model(a.model, a.device, a.dtype)
    tmp = Path(tempfile.mkdtemp(prefix="fv_bench_"))
    if a.fixed_trials:
        ft = load_trials(a.fixed_trials)
    else:
        save_trials(tmp / "trials.json", make_icl_trials(FIXTURES / "antonym_tiny.json", lm.tokenizer, a.n_trials, 10, 0,
                                                         model_name_for_tokenizer=lm.name, model_prepend_bos=lm.prepend_bos,
                                                         prepend_bos_token_used=not lm.prepend_bos))
        ft = load_trials(tmp / "trials.json")
    trials = ft.subset(a.n_trials)
    prefixes, seps = ft.meta.get("prefixes"), ft.meta.get("separators")
    edit = a.edit_layer if a.edit_layer is not None else lm.info.n_layers // 3
    params = {m: Params(n_top_heads=10, edit_layer=edit, max_trials=a.n_trials, mode=m) for m in ("exact", "fast")}
    ref = Reference(a.src_root, a.baukit_root, compat=a.src_compat)
    dev = lm.device

    dummy = fv_dummy_labels(lm, trials, prefixes, seps)
    prepared = prepare_trials(lm.tokenizer, trials, dummy, lm.prepend_bos, lm.info.device)
    corrupted, pad = [p.corrupted for p in prepared], pad_token_id(lm.tokenizer)
    mean = mean_head_activations(lm.model, lm.info, [p.clean for p in prepared], len(dummy))
    indirect_effects(lm.model, lm.info, corrupted, mean, pad, mode="fast")  # warm-up

    rows: list[tuple[str, float]] = []
    t_ie_ref, ie_ref = timed(dev, lambda: ref.indirect_effect(lm, trials, mean, prefixes, seps), a.reps)
    t_ie_exact, ie_exact = timed(dev, lambda: indirect_effects(lm.model, lm.info, corrupted, mean, pad, mode="exact"), a.reps)
    t_ie_fast, ie_fast = timed(dev, lambda: indirect_effects(lm.model, lm.info, corrupted, mean, pad, mode="fast"), a.reps)
    rows += [("indirect effect: reference", t_ie_ref), ("indirect effect: fv exact", t_ie_exact), ("indirect effect: fv fast", t_ie_fast)]

    t_pl_ref, _ = timed(dev, lambda: src_stage_values(ref, lm, trials, params["exact"], prefixes, seps), a.reps)
    t_pl_exact, _ = timed(dev, lambda: fv_stage_values(lm, trials, params["exact"], prefixes, seps), a.reps)
    t_pl_fast, pl_fast = timed(dev, lambda: fv_stage_values(lm, trials, params["fast"], prefixes, seps), a.reps)
    rows += [("whole runtime: reference", t_pl_ref), ("whole runtime: fv exact", t_pl_exact), ("whole runtime: fv fast", t_pl_fast)]

    def m2(cache: SrcCache | None):
        source = live_source(ref)
        source.cache = cache
        return run_parity(lm, ft, params["exact"], source, None, stage_functions=STAGE_FUNCTIONS)

    cache = SrcCache(tmp / "src_cache")
    t_m2_plain, run_plain = timed(dev, lambda: m2(None), a.reps)
    m2(cache)  # the first run fills the cache; the repeats below read it
    t_m2_cached, run_cached = timed(dev, lambda: m2(cache), a.reps)
    rows += [("M2 exact, no cache", t_m2_plain), ("M2 exact, cache warm", t_m2_cached)]

    ratios = {
        "indirect effect, reference / fv fast": t_ie_ref / t_ie_fast,
        "indirect effect, fv exact / fv fast": t_ie_exact / t_ie_fast,
        "whole runtime, reference / fv fast": t_pl_ref / t_pl_fast,
        "whole runtime, reference / fv exact": t_pl_ref / t_pl_exact,
        "repeated M2, no cache / cache": t_m2_plain / t_m2_cached,
    }
    checks = {
        "indirect effect exact vs reference, max abs diff": float((ie_exact - ie_ref).abs().max()),
        "indirect effect fast vs exact, max abs diff": float((ie_fast - ie_exact).abs().max()),
        "indirect effect, max |effect|": float(ie_exact.abs().max()),
        "M2 with cache: status / reference side": f"{run_cached.result.status} / {run_cached.sides.get('reference', '')[:5]}",
        "M2 without cache: status": run_plain.result.status,
    }
    load = os.getloadavg()
    print(f"\n{lm.name}: {lm.info.n_layers} layers x {lm.info.n_heads} heads, d_model {lm.info.d_model}, {len(trials)} trials, "
          f"{dev} {str(lm.dtype).replace('torch.', '')}, "
          f"{torch.cuda.get_device_name() if dev.startswith('cuda') else f'{torch.get_num_threads()} CPU threads'}, "
          f"best of {a.reps}, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"{'measurement':<34}{'seconds':>10}")
    for name, t in rows:
        print(f"{name:<34}{t:>10.3f}")
    print(f"\n{'ratio':<40}{'x':>8}")
    for name, r in ratios.items():
        print(f"{name:<40}{r:>8.1f}")
    print()
    for name, v in checks.items():
        print(f"{name}: {v:.3g}" if isinstance(v, float) else f"{name}: {v}")
    if a.json:
        Path(a.json).write_text(json.dumps({"seconds": dict(rows), "ratios": ratios, "checks": checks, "load": load}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
