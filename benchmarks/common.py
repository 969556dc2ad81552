"""What the benchmarks share: their common options, the fixed trials they run on, and peak-memory windows.

``add_common_args`` gives every benchmark the same options (model, trials, repetitions, the reference's
location, device and dtype, JSON output). ``PeakMemory`` measures the peak memory above the memory in use when
a window starts: CUDA's allocator counters on a GPU; on Linux CPUs the resident set's high-water mark, reset
through ``/proc/self/clear_refs`` at each window (where that file cannot be written, ``resettable`` is False
and peaks are reported as unknown, NaN).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
from pathlib import Path

import torch

from fv.paths import FIXTURES
from fv.runtime.trials import FixedTrials, load_trials, make_icl_trials, save_trials


def add_common_args(ap: argparse.ArgumentParser, model_default: str | None = "tiny-llama", reps_default: int = 3) -> None:
    """The options every benchmark takes."""
    ap.add_argument("--model", default=model_default,
                    help=f"model folder or tiny model name (default {model_default or 'the benchmark own shapes'})")
    ap.add_argument("--fixed-trials", default=None,
                    help="fixed-trials JSON (default: trials made from fixtures/antonym_tiny.json, 10 shots, seed 0)")
    ap.add_argument("--n-trials", type=int, default=10, help="trials (default 10)")
    ap.add_argument("--reps", type=int, default=reps_default,
                    help=f"repetitions per measurement; the median is reported (default {reps_default})")
    ap.add_argument("--src-root", default=None, help="the reference's src/, to measure it too (optional)")
    ap.add_argument("--baukit-root", default=None, help="folder holding baukit/nethook.py when baukit does not import")
    ap.add_argument("--src-compat", action="store_true",
                    help="the reference's FV addition on tensor layer outputs (see fv --help)")
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    ap.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (default float32)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")


def apply_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)


def make_trials(lm, path: str | None, n: int, folder: str | Path | None = None) -> FixedTrials:
    """``n`` fixed trials: from ``path``, else made from the embedded antonym data for this tokenizer (10 shots, seed 0)."""
    if path:
        ft = load_trials(path)
    else:
        out = Path(folder or tempfile.mkdtemp(prefix="fv_bench_")) / f"bench_trials_{n}.json"
        save_trials(out, make_icl_trials(FIXTURES / "antonym_tiny.json", lm.tokenizer, n, 10, 0,
                                         model_name_for_tokenizer=lm.name, model_prepend_bos=lm.prepend_bos,
                                         prepend_bos_token_used=not lm.prepend_bos))
        ft = load_trials(out)
    if len(ft.trials) < n:
        raise SystemExit(f"error: {path} holds {len(ft.trials)} trials, {n} asked; pass --n-trials {len(ft.trials)} or fewer.")
    return ft


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory windows on ``device``: ``base = start()``, then ``peak_mib(base)`` after the work."""

    def __init__(self, device: str):
        self.cuda = str(device).startswith("cuda")
        self.resettable = self.cuda or self._reset_rss()

    @staticmethod
    def _reset_rss() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            return _status_kib("VmHWM") is not None
        except OSError:
            return False

    def start(self) -> int:
        """Open a window; returns the bytes (CUDA) or KiB (CPU resident set) in use now."""
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()
        if self.resettable:
            self._reset_rss()
            return _status_kib("VmRSS") or 0
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def peak_mib(self, base: int) -> float:
        """MiB of peak memory above ``base`` since ``start``; NaN where the CPU's peak cannot be reset."""
        if self.cuda:
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - base) / 2**20
        if not self.resettable:
            return float("nan")
        return max((_status_kib("VmHWM") or 0) - base, 0) / 1024
