"""Benchmark: what each stage of the fv runtime costs per trial, in forward passes of the same model.

For each model shape (by default three, built offline: the tiny model; a mid-size Llama, 16 layers, 8 heads with
2 key/value heads, width 256, a 2k vocabulary; the same with the real Llama 3 tokenizer and its 128k vocabulary)
it runs ``fv.pipelines.run.run_runtime`` in exact and fast mode and reports, per stage (preparation, mean
activations, indirect effects, top heads and FV, evaluation, writing artifacts):

* forward passes per trial: the stage's seconds over the unit, measured in the same run: per trial, the median
  of ``--reps`` (at least 3) warm, gradient-free plain forward passes of that trial's corrupted prompt with
  the model's default logits, summed over the run's trials, measured again before each repetition (a load
  that changes over minutes moves both alike; the median over repetitions of their ratio is reported).
  Seconds are noisy on a shared machine, units
  measured side by side are not, and they carry from a CPU to a GPU and from a tiny model to an 8B one;
* FLOP passes per trial (fv's modes): the stage's matmul FLOPs over the unit's, counted in one more run under
  ``torch.utils.flop_counter.FlopCounterMode``. They do not move with the machine, its load or the thread count,
  where seconds move by 20% from run to run on a shared 2-core machine; seconds show what batching buys on top;
* seconds per trial, the median of ``--reps`` repetitions;
* the reference's cost for the same stage and its ratio to fv (with ``--src-root``; the reference runs in
  this process, through ``fv.reference``; never on the 128k-vocabulary shape unless ``--reference-large``);
* peak memory per stage above the memory in use when the stage starts (CUDA's counters, or the CPU's
  resident set with its high-water mark reset at each stage), at each of ``--memory-trials`` and at
  ``--n-trials`` trials, so a peak that grows with the trials shows (fast mode runs up to 16 trials per pass:
  a count above that, as in ``--memory-trials 2,40``, shows the peak flat; exact mode and the reference take
  the smallest count only).

The edit layer is a third of the layers. One picture (``--plot``): cost per trial against model size, per
stage and mode.

    python benchmarks/bench_pipeline.py --shapes tiny --n-trials 2 --memory-trials 1 --exact-trials 1 --reps 3
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakMemory, add_common_args, apply_threads, make_trials, sync  # noqa: E402

from fv.model.loading import load_model  # noqa: E402
from fv.pipelines.run import STAGE_NAMES, RunConfig, run_runtime  # noqa: E402
from fv.runtime.prepared import prepare_trials  # noqa: E402
from fv.runtime.prompts import has_bos_text  # noqa: E402
from fv.runtime.slots import dummy_labels

# the benchmark's shapes; a mid-size Llama's MLP is 3.5 times its width, as Llama-3.1-8B's
SHAPES = {
    "tiny": None,  # fv's tiny-llama
    "mid": dict(tokenizer="fixture", n_layers=16, d_model=256, n_heads=8, n_kv_heads=2, d_mlp=896, vocab=2048),
    "mid-llama3": dict(tokenizer="llama3", n_layers=16, d_model=256, n_heads=8, n_kv_heads=2, d_mlp=896, vocab=None),
}
LARGE_VOCAB = 50_000  # above this, the reference runs only with --reference-large
REF_STAGES = {"preparation": ("prompt", "slot"), "mean activations": ("mean_activations",),
              "indirect effects": ("indirect_effect",), "top heads and FV": ("top_heads", "fv"),
              "evaluation": ("injection",), "writing artifacts": ()}


def build_shape(name: str) -> Path:
    """The model folder of a benchmark shape, built offline once into fv's cache (random weights, seed 1234)."""
    from fv.model.tiny import TINY_MODELS, _llama_config, _write_tokenizer, cache_root, ensure_tiny_model

    if name not in SHAPES:
        raise SystemExit(f"error: unknown shape {name!r}; choose from {', '.join(SHAPES)} or pass --model.")
    s = SHAPES[name]
    if s is None:
        return ensure_tiny_model("tiny-llama")
    key = hashlib.sha256(json.dumps([s, 1], sort_keys=True).encode()).hexdigest()[:10]
    # 'llama' and '8b' in the name: the reference's loader picks Llama code paths and float32 from the path
    dest = cache_root() / "models" / f"bench-{name}-llama-8b-rule-{key}"
    if (dest / "model.safetensors").is_file():
        return dest
    from transformers import AutoTokenizer, LlamaForCausalLM

    spec = TINY_MODELS["tiny-llama3tok" if s["tokenizer"] == "llama3" else "tiny-llama"]
    tmp = Path(tempfile.mkdtemp(prefix=f".bench-{name}-", dir=dest.parent if dest.parent.is_dir() else None))
    _write_tokenizer(spec, tmp)
    tok = AutoTokenizer.from_pretrained(str(tmp))
    cfg = _llama_config(s, tok)
    if s["vocab"]:
        cfg.vocab_size = max(s["vocab"], len(tok))  # rows no token reaches, as real vocabularies are padded
    torch.manual_seed(1234)
    LlamaForCausalLM(cfg).to(torch.float32).save_pretrained(str(tmp), safe_serialization=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp.replace(dest)
    return dest


class StageClock:
    """``run_runtime``'s ``stage`` callback: seconds and peak memory (MiB above the stage's start) per stage."""

    def __init__(self, device: str):
        self.device = device
        self.mem = PeakMemory(device)
        self.seconds: dict[str, float] = defaultdict(float)
        self.peak: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name: str):
        sync(self.device)
        base = self.mem.start()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            sync(self.device)
            self.seconds[name] += time.perf_counter() - t0
            self.peak[name] = max(self.peak[name], self.mem.peak_mib(base))


class FlopClock:
    """``run_runtime``'s ``stage`` callback under ``torch.utils.flop_counter.FlopCounterMode``: matmul FLOPs per
    stage. Deterministic: the same on any machine, thread count or load (attention scores are not counted, in the
    stage or in the unit)."""

    def __init__(self, counter):
        self.counter = counter
        self.flops: dict[str, int] = defaultdict(int)

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = self.counter.get_total_flops()
        try:
            yield
        finally:
            self.flops[name] += self.counter.get_total_flops() - start


def unit_flops(lm, trials, prefixes, seps) -> float:
    """Matmul FLOPs of one plain forward pass of a trial's corrupted prompt (default logits), summed over ``trials``."""
    from torch.utils.flop_counter import FlopCounterMode

    dummy = dummy_labels(len(trials[0].prompt_data_clean["examples"]), lm.tokenizer, lm.prepend_bos, prefixes, seps,
                         bos_text=has_bos_text(trials[0].prompt_data_clean))
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        for pt in prepare_trials(lm.tokenizer, trials, dummy, lm.prepend_bos, lm.info.device):
            lm.model(**pt.corrupted.inputs)
    return float(fc.get_total_flops())


def run_fv_flops(lm, ft, n: int, mode: str, edit: int, folder: Path) -> dict[str, int]:
    """One run of the runtime on ``n`` trials under the FLOP counter: matmul FLOPs per stage."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        clock = FlopClock(fc)
        run_runtime(lm, ft, folder / f"{mode}-{n}-flops", RunConfig(n_top_heads=10, edit_layers=[edit], max_trials=n, mode=mode),
                    stage=clock)
    return dict(clock.flops)


def unit_seconds(lm, trials, prefixes, seps, reps: int) -> list[float]:
    """Per trial, the median of ``reps`` warm plain forward passes of its corrupted prompt (default logits, no grad)."""
    dummy = dummy_labels(len(trials[0].prompt_data_clean["examples"]), lm.tokenizer, lm.prepend_bos, prefixes, seps,
                         bos_text=has_bos_text(trials[0].prompt_data_clean))
    out = []
    with torch.no_grad():
        for pt in prepare_trials(lm.tokenizer, trials, dummy, lm.prepend_bos, lm.info.device):
            lm.model(**pt.corrupted.inputs)  # warm
            times = []
            for _ in range(reps):
                sync(lm.device)
                t0 = time.perf_counter()
                lm.model(**pt.corrupted.inputs)
                sync(lm.device)
                times.append(time.perf_counter() - t0)
            out.append(statistics.median(times))
    return out


def run_fv(lm, ft, n: int, mode: str, edit: int, reps: int, folder: Path, unit=None) -> list[StageClock]:
    """``reps`` runs of the runtime on ``n`` trials; ``unit()``, when given, is measured before each (``clock.unit``)."""
    clocks = []
    for r in range(reps):
        clock = StageClock(lm.device)
        clock.unit = unit() if unit else float("nan")
        with torch.no_grad():
            run_runtime(lm, ft, folder / f"{mode}-{n}-{r}", RunConfig(n_top_heads=10, edit_layers=[edit], max_trials=n, mode=mode),
                        stage=clock)
        clocks.append(clock)
    return clocks


def run_reference(a, lm, ft, n: int, edit: int, reps: int, unit) -> list[dict[str, float]]:
    """The reference's stage seconds (``fv.reference.stages.src_stage_values``, in this process), per repetition."""
    from fv.parity.stages import Params
    from fv.reference.adapter import Reference
    from fv.reference.stages import src_stage_values

    ref = Reference(a.src_root, a.baukit_root, compat=a.src_compat)
    params = Params(n_top_heads=10, edit_layer=edit, max_trials=n, mode="exact")
    out = []
    for _ in range(reps):
        u = unit()
        with contextlib.redirect_stderr(io.StringIO()):  # its progress bars
            sv = src_stage_values(ref, lm, ft.subset(n), params, ft.meta.get("prefixes"), ft.meta.get("separators"))
        out.append({"_unit": u, **{st: sum(sv.durations.get(k, 0.0) for k in keys) for st, keys in REF_STAGES.items() if keys}})
    return out


def _median(xs):
    return statistics.median(xs) if xs else float("nan")


def bench_shape(a, shape: str, model: str, folder: Path) -> dict:
    lm = load_model(model, a.device, a.dtype)
    folder.mkdir(parents=True, exist_ok=True)
    n_max = max(a.n_trials, *a.memory_trials, a.exact_trials or 0)
    ft = make_trials(lm, a.fixed_trials, n_max, folder)
    trials = ft.subset(n_max)
    prefixes, seps = ft.meta.get("prefixes"), ft.meta.get("separators")
    edit = a.edit_layer if a.edit_layer is not None else lm.info.n_layers // 3
    units = unit_seconds(lm, trials, prefixes, seps, a.reps)
    cfg = lm.model.config.get_text_config() if hasattr(lm.model.config, "get_text_config") else lm.model.config
    info = {"shape": shape, "model": str(lm.path), "n_layers": lm.info.n_layers, "n_heads": lm.info.n_heads,
            "n_kv_heads": int(getattr(cfg, "num_key_value_heads", lm.info.n_heads) or lm.info.n_heads),
            "d_model": lm.info.d_model, "vocab": int(cfg.vocab_size), "params": sum(p.numel() for p in lm.model.parameters()),
            "device": lm.device, "dtype": str(lm.dtype).replace("torch.", ""), "edit_layer": edit, "reps": a.reps,
            "unit_ms_per_trial": 1000 * statistics.fmean(units[: a.n_trials]),
            "prompt_tokens": [int(t.corrupted.inputs["input_ids"].shape[1]) for t in prepare_trials(
                lm.tokenizer, trials[:1], dummy_labels(10, lm.tokenizer, lm.prepend_bos, prefixes, seps,
                                                       bos_text=has_bos_text(trials[0].prompt_data_clean)),
                lm.prepend_bos, lm.info.device)],
            "runs": {}, "memory": {}}
    modes = [m for m in ("exact", "fast") if m in a.modes.split(",")]
    big = info["vocab"] > LARGE_VOCAB
    do_ref = bool(a.src_root) and (not big or a.reference_large)
    for mode in modes + (["reference"] if do_ref else []):
        n = a.n_trials if mode == "fast" else (a.exact_trials or a.n_trials)
        unit = lambda n=n, lm=lm: sum(unit_seconds(lm, trials[:n], prefixes, seps, 3))  # noqa: E731
        if mode == "reference":
            try:
                reps = run_reference(a, lm, ft, n, edit, a.reps, unit)
            except Exception as exc:  # noqa: BLE001 - the reference is optional: say why it is missing, keep fv's figures
                print(f"reference skipped on {shape}: {type(exc).__name__}: {exc}", file=sys.stderr)
                info["reference_error"] = f"{type(exc).__name__}: {exc}"
                continue
            stages = {st: {"seconds": _median([r[st] for r in reps]), "s_per_trial": _median([r[st] for r in reps]) / n,
                           "passes_per_trial": _median([r[st] / r["_unit"] for r in reps])} for st in reps[0] if st != "_unit"}
            info["runs"][mode] = {"trials": n, "stages": stages, "_units": [r["_unit"] for r in reps],
                                  "_totals": [sum(v for k, v in r.items() if k != "_unit") for r in reps]}
            continue
        counts = sorted({n, *(a.memory_trials if mode == "fast" else a.memory_trials[:1])})
        for m in counts:  # the smaller count first: resident memory grows only where nothing freed can be reused
            clocks = run_fv(lm, ft, m, mode, edit, a.reps if m == n else 1, folder, unit if m == n else None)
            info["memory"].setdefault(mode, {})[str(m)] = {st: max(c.peak.get(st, 0.0) for c in clocks) for st in STAGE_NAMES}
            if m == n:
                stages = {}
                for st in STAGE_NAMES:
                    s = _median([c.seconds.get(st, 0.0) for c in clocks])
                    stages[st] = {"seconds": s, "s_per_trial": s / n,
                                  "passes_per_trial": _median([c.seconds.get(st, 0.0) / c.unit for c in clocks]),
                                  "peak_mib": info["memory"][mode][str(m)][st]}
                flops, unit_f = run_fv_flops(lm, ft, n, mode, edit, folder), unit_flops(lm, trials[:n], prefixes, seps)
                for st in STAGE_NAMES:
                    stages[st]["flop_passes_per_trial"] = flops.get(st, 0) / unit_f
                info["runs"][mode] = {"trials": n, "stages": stages, "_units": [c.unit for c in clocks],
                                      "_totals": [sum(c.seconds.values()) for c in clocks],
                                      "flop_passes_per_trial": sum(flops.values()) / unit_f}
    for run in info["runs"].values():
        total = sum(v["seconds"] for v in run["stages"].values())
        run["units_ms_per_trial"] = [1000 * u / run["trials"] for u in run.pop("_units")]
        run["total"] = {"seconds": total, "s_per_trial": total / run["trials"],
                        **({"flop_passes_per_trial": run.pop("flop_passes_per_trial")} if "flop_passes_per_trial" in run else {}),
                        "passes_per_trial": _median([t / u for t, u in zip(run.pop("_totals"),
                                                                           [x * run["trials"] / 1000 for x in run["units_ms_per_trial"]])])}
    del lm
    return info


def bench_m2(a, shape: str, model: str, folder: Path) -> dict:
    """A repeated exact M2 gate against the live reference: without the src-values cache, and with it warm."""
    from fv.parity.run import run_parity
    from fv.parity.src_cache import SrcCache
    from fv.parity.stages import Params
    from fv.reference.adapter import Reference
    from fv.reference.stages import STAGE_FUNCTIONS, live_source

    lm = load_model(model, a.device, a.dtype)
    folder.mkdir(parents=True, exist_ok=True)
    n = a.exact_trials or a.n_trials
    ft = make_trials(lm, a.fixed_trials, n, folder)
    edit = a.edit_layer if a.edit_layer is not None else lm.info.n_layers // 3
    params = Params(n_top_heads=10, edit_layer=edit, max_trials=n, mode="exact")
    ref = Reference(a.src_root, a.baukit_root, compat=a.src_compat)

    def m2(cache):
        source = live_source(ref)
        source.cache = cache
        with contextlib.redirect_stderr(io.StringIO()):
            return run_parity(lm, ft, params, source, None, stage_functions=STAGE_FUNCTIONS)

    def timed(cache) -> tuple[float, object]:
        times, out = [], None
        for _ in range(a.reps):
            t0 = time.perf_counter()
            out = m2(cache)
            times.append(time.perf_counter() - t0)
        return statistics.median(times), out

    cache = SrcCache(folder / "src_cache")
    t_plain, plain = timed(None)
    m2(cache)  # the first run fills the cache; the repeats read it
    t_cached, cached = timed(cache)
    res = {"shape": shape, "trials": n, "seconds_no_cache": t_plain, "seconds_cache_warm": t_cached,
           "status_no_cache": plain.result.status, "status_cache_warm": cached.result.status}
    print(f"\nM2 exact on {shape}, {n} trials: no cache {t_plain:.2f} s ({plain.result.status}), cache warm {t_cached:.2f} s "
          f"({cached.result.status}), ratio {t_plain / t_cached:.1f}x")
    return res


def print_shape(info: dict) -> None:
    print(f"\n== {info['shape']}: {info['n_layers']} layers x {info['n_heads']} heads ({info['n_kv_heads']} kv), "
          f"d_model {info['d_model']}, vocab {info['vocab']}, {info['params'] / 1e6:.1f}M parameters, {info['device']} "
          f"{info['dtype']}, edit layer {info['edit_layer']}, prompts of {info['prompt_tokens'][0]} tokens")
    print(f"   unit: one plain forward pass of a trial's corrupted prompt (default logits, no grad, median of {info['reps']}) "
          f"= {info['unit_ms_per_trial']:.1f} ms; seconds: median of {info['reps']} repetitions")
    print("   FLOP passes: the stage's matmul FLOPs over the unit's, counted once (torch.utils.flop_counter; the same on "
          "any machine and load)")
    runs, mem = info["runs"], info["memory"]
    ref = runs.get("reference")
    counts = sorted({int(c) for m in mem.values() for c in m})
    head = f"{'stage':<20}{'mode':<7}{'trials':>7}{'passes/trial':>14}{'FLOP passes':>13}{'ms/trial':>10}"
    head += f"{'ref/fv':>8}" if ref else ""
    head += "".join(f"{f'peak MiB @{c}':>15}" for c in counts)
    print(head)
    for st in (*STAGE_NAMES, "total"):
        for mode in ("exact", "fast", "reference"):
            if mode not in runs:
                continue
            r = runs[mode]
            v = r["total"] if st == "total" else r["stages"].get(st)
            if v is None:
                continue
            fp = v.get("flop_passes_per_trial")
            line = (f"{st:<20}{mode:<7}{r['trials']:>7}{v['passes_per_trial']:>14.3f}" + (f"{fp:>13.3f}" if fp is not None else f"{'-':>13}")
                    + f"{1000 * v['s_per_trial']:>10.1f}")
            if ref:
                rv = ref["total"] if st == "total" else ref["stages"].get(st)
                line += f"{rv['seconds'] / ref['trials'] / v['s_per_trial']:>7.1f}x" if rv and mode != "reference" and v["seconds"] > 0 else f"{'':>8}"
            for c in counts:
                pk = mem.get(mode, {}).get(str(c))
                val = (max(pk.values()) if st == "total" else pk.get(st)) if pk else None
                line += f"{val:>15.1f}" if val is not None and not math.isnan(val) else f"{'-':>15}"
            print(line)


def plot(results: list[dict], path: Path) -> None:
    """Cost per trial (forward passes) against parameters, one panel per mode, one line per stage and the total."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in ("exact", "fast", "reference") if any(m in r["runs"] for r in results)]
    fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4.5), sharey=True, squeeze=False)
    for ax, mode in zip(axes[0], modes):
        rs = sorted((r for r in results if mode in r["runs"]), key=lambda r: r["params"])
        xs = [r["params"] for r in rs]
        for st in (*STAGE_NAMES, "total"):
            ys = [(r["runs"][mode]["total"] if st == "total" else r["runs"][mode]["stages"].get(st, {})).get("passes_per_trial")
                  for r in rs]
            if all(y is None for y in ys):
                continue
            ax.plot(xs, [max(y or 0, 1e-4) for y in ys], "o-" if st != "total" else "s--k", label=st,
                    lw=2.5 if st == "total" else 1.5)
        for r in rs:
            ax.annotate(r["shape"], (r["params"], r["runs"][mode]["total"]["passes_per_trial"]), textcoords="offset points",
                        xytext=(4, 6), fontsize=8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{mode}: cost per trial by stage")
        ax.set_xlabel("model parameters")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("forward passes per trial (same model, same run)")
    axes[0][0].legend(fontsize=8, loc="best")  # the first panel (fv) has every stage
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp" + path.suffix)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def _counts(text: str) -> list[int]:
    """``--memory-trials``: '2' or '2,40', smallest first."""
    try:
        out = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected trial counts like 2 or 2,40, got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("expected at least one trial count, like 2 or 2,40")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, model_default=None)
    ap.add_argument("--shapes", default="tiny,mid,mid-llama3",
                    help="benchmark shapes, comma-separated, from tiny, mid, mid-llama3 (default all three); ignored with --model")
    ap.add_argument("--modes", default="exact,fast", help="fv modes to measure, comma-separated (default exact,fast)")
    ap.add_argument("--exact-trials", type=int, default=None,
                    help="trials for exact mode and the reference (default --n-trials); their cost per trial does not "
                         "depend on the count, fewer keep large shapes short")
    ap.add_argument("--memory-trials", type=_counts, default=[2],
                    help="trial counts, comma-separated, whose peak memory is shown beside --n-trials' (default 2; "
                         "fast mode takes each, exact mode and the reference the smallest)")
    ap.add_argument("--edit-layer", type=int, default=None, help="layer the FV is added after (default: a third of the layers)")
    ap.add_argument("--reference-large", action="store_true",
                    help=f"also run the reference on shapes with a vocabulary over {LARGE_VOCAB} (minutes per trial on a CPU)")
    ap.add_argument("--m2", action="store_true",
                    help="also time a repeated exact M2 gate on the first shape, without and with the src-values cache (needs --src-root)")
    ap.add_argument("--plot", default="results_fv/bench/cost_per_trial.png", help="picture to write ('' for none)")
    a = ap.parse_args(argv)
    apply_threads(a.threads)
    if a.reps < 1 or a.n_trials < 1 or min(a.memory_trials) < 1:
        raise SystemExit("error: --reps, --n-trials and --memory-trials must be at least 1 (the issue's figures use --reps 3 or more).")
    shapes = [("model", a.model)] if a.model else [(s, None) for s in a.shapes.split(",") if s]
    folder = Path(tempfile.mkdtemp(prefix="fv_bench_"))
    results = []
    for shape, model in shapes:
        path = model if model else str(build_shape(shape))
        info = bench_shape(a, shape if not model else Path(model).name, path, folder / shape)
        print_shape(info)
        results.append(info)
    m2 = bench_m2(a, shapes[0][0], shapes[0][1] or str(build_shape(shapes[0][0])), folder / "m2") if a.m2 and a.src_root else None
    if a.m2 and not a.src_root:
        print("--m2 skipped: it needs --src-root", file=sys.stderr)
    if a.plot:
        plot(results, Path(a.plot))
        print(f"\npicture: {a.plot}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"shapes": results, "stages": list(STAGE_NAMES),
                                            "cpu_threads": torch.get_num_threads(), "m2": m2}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
