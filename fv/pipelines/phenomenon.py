"""Does a model show function vectors? Its figures on the rule tasks, measured with fv's gated pipeline.

Per task (``fv.model.rule_tasks``): fixed trials (10 shots) on the *valid* words choose the edit layer (the layer whose
FV gives the highest zero-shot plus shuffled-label accuracy; ties: the larger zero-shot log-prob gain, then the earlier
layer); fixed trials on the *test* words (never in a training sequence) give the figures: ICL accuracy (the clean
prompt's top-1 is the answer's first token), zero-shot and shuffled-label accuracy without and with the task's own FV
at that layer (the reference's first-token measure), and the indirect effects (the trial mean per head: the top
head's and the median |effect|).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from fv.model.rule_tasks import TASKS, task_file

N_SHOTS = 10


def _trials(lm, task: str, part: str, n: int, seed: int, folder: Path):
    from fv.runtime.trials import load_trials, make_icl_trials, save_trials

    raw = make_icl_trials(task_file(task, part), lm.tokenizer, n_trials=n, n_shots=N_SHOTS, seed=seed,
                          model_name_for_tokenizer=str(lm.path), model_prepend_bos=lm.prepend_bos,
                          dataset_json_label=f"fixtures/rule_tasks/{task_file(task, part).name}")
    return load_trials(save_trials(folder / f"fixed_trials_{task}_{part}.json", raw))


def _pick_layer(out: Path, n_layers: int) -> int:
    from fv.io import read_json

    def key(layer: int):
        sets = read_json(out / f"step6_results_L{layer}.json")["summary"]["by_prompt_set"]
        z, s = sets["zero_shot"], sets["shuffled"]
        return (z["acc_with"] + s["acc_with"], z["mean_delta_logprob"], -layer)

    return max(range(n_layers), key=key)


def measure_task(lm, task: str, work: Path, n_test: int = 50, n_valid: int = 30, seed: int = 0, n_top_heads: int = 10) -> dict:
    """One task's figures (see the module's docstring)."""
    from fv.io import load_tensor_file, read_json
    from fv.pipelines.run import RunConfig, run_runtime
    from fv.runtime.evaluation import icl_accuracy

    layers = list(range(lm.info.n_layers))
    valid_out = work / task / "valid"
    run_runtime(lm, _trials(lm, task, "valid", n_valid, seed, work), valid_out,
                RunConfig(n_top_heads=n_top_heads, edit_layers=layers))
    layer = _pick_layer(valid_out, lm.info.n_layers)
    test_out = work / task / "test"
    res = run_runtime(lm, _trials(lm, task, "test", n_test, seed, work), test_out,
                      RunConfig(n_top_heads=n_top_heads, edit_layers=layers))
    icl = icl_accuracy(lm.model, res.prepared)
    by_layer = {L: read_json(test_out / f"step6_results_L{L}.json")["summary"]["by_prompt_set"] for L in layers}
    z, s = by_layer[layer]["zero_shot"], by_layer[layer]["shuffled"]
    effect = load_tensor_file(test_out / "indirect_effect.pt").float().mean(dim=0)  # (layers, heads)
    flat = effect.reshape(-1)
    top = int(flat.argmax())
    return {
        "task": task, "n_test_trials": n_test, "n_valid_trials": n_valid, "n_top_heads": n_top_heads,
        "edit_layer": layer, "icl_accuracy": icl,
        "zero_shot_accuracy": z["acc_base"], "zero_shot_accuracy_with_fv": z["acc_with"],
        "shuffled_accuracy": s["acc_base"], "shuffled_accuracy_with_fv": s["acc_with"],
        "zero_shot_accuracy_with_fv_by_layer": {L: by_layer[L]["zero_shot"]["acc_with"] for L in layers},
        "top_head": [top // effect.shape[1], top % effect.shape[1]], "top_head_effect": float(flat[top]),
        "median_abs_effect": float(flat.abs().median()),
    }


def measure(model: str, tasks: Sequence[str] = TASKS, n_test: int = 50, n_valid: int = 30, seed: int = 0,
            n_top_heads: int = 10, work: str | Path | None = None, log: Callable[[str], None] = print,
            device: str | None = "cpu", dtype: str | None = None) -> dict:
    """Every task's figures and their means: ``{"tasks": [...], "mean": {...}}``. ``work`` keeps the runs' folders
    (default: a temporary folder, removed); ``device`` and ``dtype`` as ``fv.model.loading.load_model`` takes them."""
    from fv.model.loading import load_model

    lm = load_model(model, device=device, dtype=dtype)
    with tempfile.TemporaryDirectory(prefix="fv-phenomenon-") as tmp:
        root = Path(work) if work else Path(tmp)
        rows = []
        for task in tasks:
            rows.append(measure_task(lm, task, root, n_test, n_valid, seed, n_top_heads))
            r = rows[-1]
            log(f"{task:12s} ICL {r['icl_accuracy']:.2f}  zero-shot {r['zero_shot_accuracy']:.2f} -> "
                f"{r['zero_shot_accuracy_with_fv']:.2f} with the FV at layer {r['edit_layer']}  shuffled "
                f"{r['shuffled_accuracy']:.2f} -> {r['shuffled_accuracy_with_fv']:.2f}  top head {tuple(r['top_head'])} "
                f"{r['top_head_effect']:.3f} (median |effect| {r['median_abs_effect']:.4f})")
    keys = ("icl_accuracy", "zero_shot_accuracy", "zero_shot_accuracy_with_fv", "shuffled_accuracy",
            "shuffled_accuracy_with_fv", "top_head_effect", "median_abs_effect")
    mean = {k: statistics.fmean(r[k] for r in rows) for k in keys}
    return {"tasks": rows, "mean": mean}


def task_row(lm, task: str, out: Path, result, layers: Sequence[int]) -> dict:
    """One task's line of a run's story, from a finished ``run_runtime`` into ``out`` over ``layers``: ICL accuracy,
    zero-shot accuracy without the FV and with it at the best of ``layers`` (by zero-shot accuracy with the FV, then its
    log-prob gain, then the earlier layer), and the top head with its trial-mean indirect effect (probability)."""
    from fv.io import read_json
    from fv.runtime.evaluation import icl_accuracy

    sets = {L: read_json(out / f"step6_results_L{L}.json")["summary"]["by_prompt_set"]["zero_shot"] for L in layers}
    best = max(layers, key=lambda L: (sets[L]["acc_with"], sets[L]["mean_delta_logprob"], -L))
    top = read_json(out / "top_heads.json")[0]
    return {"task": task, "n_trials": len(result.prepared), "icl_accuracy": icl_accuracy(lm.model, result.prepared),
            "zero_shot_accuracy": sets[best]["acc_base"], "zero_shot_accuracy_with_fv": sets[best]["acc_with"],
            "best_layer": best, "top_head": [int(top[0]), int(top[1])], "top_head_effect": float(top[2])}


def run_tasks(lm, datasets: dict[str, Path], root: Path, cfg, n_trials: int = 10, seed: int = 0,
              log: Callable[[str], None] = lambda _line: None, quiet: bool = True) -> list[dict]:
    """``run_runtime`` on each task of ``datasets`` ({task: its ICL dataset JSON}), ``n_trials`` fixed trials of 10 shots
    from ``seed`` each, into ``root/<task>/`` (every artifact, as a run folder); returns each task's ``task_row``."""
    from fv.pipelines.run import run_runtime
    from fv.runtime.trials import load_trials, make_icl_trials, save_trials

    rows = []
    for task, dataset in datasets.items():
        out = Path(root) / task
        raw = make_icl_trials(dataset, lm.tokenizer, n_trials=n_trials, n_shots=N_SHOTS, seed=seed,
                              model_name_for_tokenizer=lm.name, model_prepend_bos=lm.prepend_bos,
                              prepend_bos_token_used=not lm.prepend_bos, dataset_json_label=Path(dataset).name)
        trials = load_trials(save_trials(out / f"fixed_trials_{task}_t{n_trials}_s{N_SHOTS}_seed{seed}_{lm.name}.json", raw))
        log(f"task {task}: {n_trials} trials into {out}")
        rows.append(task_row(lm, task, out, run_runtime(lm, trials, out, cfg, quiet=quiet, log=log), list(cfg.edit_layers)))
    return rows
