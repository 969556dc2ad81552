"""Benchmark: indirect effects (and mean activations) of the reference, fv exact and fv fast, in one process.

Times each several times on the same model and fixed trials, and prints medians, the ratios reference/fast and
exact/fast, peak memory, and the max abs diff of fast against exact (and of exact against the reference).
Mean-activation memory is measured at two trial counts to show that fast mode's running sum is flat in the
number of trials. Runs unchanged on the tiny models on CPU and on a GPU model.

    python benchmarks/bench_indirect_effect.py --model tiny-llama --n-trials 10 --src-root /path/to/src
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakMemory, add_common_args, apply_threads, make_trials, sync  # noqa: E402

from fv.model.loading import load_model  # noqa: E402
from fv.runtime.activations import mean_head_activations  # noqa: E402
from fv.runtime.effects import indirect_effects, pad_token_id  # noqa: E402
from fv.runtime.prepared import prepare_trials  # noqa: E402
from fv.runtime.slots import dummy_labels  # noqa: E402
from fv.runtime.trials import load_trials  # noqa: E402


def _trials(lm, path: str | None, n: int):
    return make_trials(lm, path, n).subset(n)


def timed(lm, fn, reps: int):
    """Median seconds of ``reps`` runs, the peak memory (MiB) above the start, and the last result."""
    times, out = [], None
    mem = PeakMemory(lm.device)
    base = mem.start()
    for _ in range(reps):
        sync(lm.device)
        t0 = time.perf_counter()
        out = fn()
        sync(lm.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), mem.peak_mib(base), out


def mean_activation_memory(lm, trials, dummy, mode: str) -> float:
    """Bytes the mean-activation computation holds for the trials: exact stacks them all, fast keeps one sum."""
    per = lm.info.n_layers * lm.info.n_heads * len(dummy) * lm.info.head_dim * 4
    return (len(trials) + 1) * per if mode == "exact" else 2 * per


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--memory-trials", default="10,100", help="two trial counts for the mean-activation memory check")
    ap.add_argument("--skip-exact", action="store_true", help="skip fv exact (for large models where it is slow)")
    a = ap.parse_args(argv)
    apply_threads(a.threads)

    lm = load_model(a.model, a.device, a.dtype)
    trials = _trials(lm, a.fixed_trials, a.n_trials)
    bos = lm.prepend_bos
    n_shots = len(trials[0].prompt_data_clean["examples"])
    dummy = dummy_labels(n_shots, lm.tokenizer, bos)
    prep = lambda ts: prepare_trials(lm.tokenizer, ts, dummy, bos, lm.info.device)  # noqa: E731
    prepared = prep(trials)
    corrupted = [p.corrupted for p in prepared]
    pad = pad_token_id(lm.tokenizer)
    mean = mean_head_activations(lm.model, lm.info, [p.clean for p in prepared], len(dummy))
    res: dict = {}
    small, large = (int(x) for x in a.memory_trials.split(","))
    # measured first: on the CPU, resident memory grows only where nothing freed earlier can be reused
    print(f"mean activations: peak memory at {small} vs {large} trials")
    mem = {}
    sets = {n: [p.clean for p in prep(_trials(lm, a.fixed_trials, n) if not a.fixed_trials else load_trials(a.fixed_trials).subset(n))]
            for n in (small, large)}
    for mode in ("fast", "exact"):
        for n in (small, large):
            cl, tr = sets[n], sets[n]
            t, peak, _ = timed(lm, lambda: mean_head_activations(lm.model, lm.info, cl, len(dummy), mode=mode), 1)
            mem[(mode, n)] = (mean_activation_memory(lm, tr, dummy, mode) / 2**20, peak)
            print(f"  {mode:<6} {n:>4} trials: {t:7.2f} s, trial storage {mem[(mode, n)][0]:8.2f} MiB, measured peak {peak:7.1f} MiB")
    for mode in ("fast", "exact"):
        r = mem[(mode, large)][0] / mem[(mode, small)][0]
        res[f"mean_activation_storage_ratio_{mode}_{large}_vs_{small}"] = r
        res[f"mean_activation_peak_mib_{mode}"] = {small: mem[(mode, small)][1], large: mem[(mode, large)][1]}
        print(f"  {mode}: storage at {large} trials / at {small} trials = {r:.2f}; measured peak "
              f"{mem[(mode, small)][1]:.1f} -> {mem[(mode, large)][1]:.1f} MiB")
    ie = lambda mode: indirect_effects(lm.model, lm.info, corrupted, mean, pad, mode=mode)  # noqa: E731
    ie("fast")  # warm-up

    rows = {}
    res.update({"device": lm.device, "dtype": str(lm.dtype), "model": str(lm.path), "n_trials": len(trials),
                 "n_layers": lm.info.n_layers, "n_heads": lm.info.n_heads, "d_model": lm.info.d_model, "reps": a.reps,
                 "cpu_threads": torch.get_num_threads(),
                 "gpu": torch.cuda.get_device_name() if lm.device.startswith("cuda") else None})
    rows["fv fast"] = timed(lm, lambda: ie("fast"), a.reps)
    if not a.skip_exact:
        rows["fv exact"] = timed(lm, lambda: ie("exact"), a.reps)
    if a.src_root:
        from fv.reference.adapter import Reference

        ref = Reference(a.src_root, a.baukit_root, compat=a.src_compat)
        if "llama" not in str(lm.path).lower():
            print("reference skipped: the model path lacks 'llama' (the reference picks its code paths by that word)", file=sys.stderr)
        else:
            prefixes = {"input": "Q:", "output": "A:", "instructions": ""}
            seps = {"input": "\n", "output": "\n\n", "instructions": ""}
            import contextlib  # noqa: E401
            import io

            def run_ref():
                with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
                    return ref.indirect_effect(lm, trials, mean, prefixes, seps)
            rows["reference"] = timed(lm, run_ref, a.reps)

    fast_t = rows["fv fast"][0]
    print(f"\nindirect effect, {len(trials)} trials, {lm.info.n_layers} layers x {lm.info.n_heads} heads, {lm.device} {lm.dtype}, "
          f"{res['gpu'] or f'{torch.get_num_threads()} CPU threads'}")
    print(f"{'implementation':<16}{'median s':>10}{'per trial s':>13}{'peak MiB':>10}{'x fast':>9}")
    for name, (t, peak, _) in rows.items():
        print(f"{name:<16}{t:>10.3f}{t / len(trials):>13.4f}{peak:>10.1f}{t / fast_t:>9.1f}")
    res["median_s"] = {k: v[0] for k, v in rows.items()}
    res["peak_mib"] = {k: v[1] for k, v in rows.items()}
    if "reference" in rows:
        res["ratio_reference_over_fast"] = rows["reference"][0] / fast_t
        print(f"ratio reference/fast: {res['ratio_reference_over_fast']:.1f}")
    if "fv exact" in rows:
        res["ratio_exact_over_fast"] = rows["fv exact"][0] / fast_t
        d = (rows["fv fast"][2] - rows["fv exact"][2]).abs().max().item()
        res["max_abs_diff_fast_vs_exact"] = d
        print(f"ratio exact/fast: {res['ratio_exact_over_fast']:.1f}")
        print(f"max abs diff fast vs exact: {d:.3g} (scale: max |effect| {rows['fv exact'][2].abs().max().item():.3g})")
        if "reference" in rows:
            e = (rows["fv exact"][2] - rows["reference"][2]).abs().max().item()
            res["max_abs_diff_exact_vs_reference"] = e
            print(f"max abs diff exact vs reference: {e:.3g}")

    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
