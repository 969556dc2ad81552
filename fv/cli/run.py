"""``fv runtime run`` (M4; earlier ``fv run``): the fv runtime end to end, with every artifact, its meta and its
pictures."""

from __future__ import annotations

import argparse
from pathlib import Path

from fv.cli.common import add_layout_arg, add_model_args, add_noun, add_quiet, add_stage_args, edit_layer_of
from fv.lock import HELP as LOCK_HELP


def cmd_run(a: argparse.Namespace) -> int:
    from fv.lock import output_lock
    from fv.progress import log_to_stderr
    from fv.runtime.trials import load_trials

    log = log_to_stderr(a.quiet)
    ft = load_trials(a.fixed_trials) if a.fixed_trials else None  # a bad file fails before the model loads
    out = Path(a.out)
    with output_lock(out, note=log):  # before the model loads: a second writer on this folder is refused at once
        return _run_locked(a, ft, out, log)


def _run_locked(a: argparse.Namespace, ft, out: Path, log) -> int:
    from fv.model.default_inputs import EMBEDDED_DEFAULT, default_inputs
    from fv.model.loading import load_model
    from fv.parity.dump import write_runtime_dump
    from fv.pipelines.run import RunConfig, parse_layers, run_runtime
    from fv.runtime.trials import load_trials, make_icl_trials, require_tokenizer_agrees, save_trials

    model = a.model or EMBEDDED_DEFAULT
    lm = load_model(model, a.device, a.dtype, attn_implementation=getattr(a, "attn_implementation", None))
    log(f"model {lm.name}: {lm.loading_rule} (attention: {lm.attn_implementation})")
    defaults = default_inputs(lm.path)
    layers = parse_layers(a.edit_layers, lm.info.n_layers, edit_layer_of(a, lm))
    if ft is None:
        name, dataset = next(iter(defaults.trial_sets.items()))
        path = out / f"fixed_trials_{name}_t10_s10_seed0_{lm.name}.json"
        save_trials(path, make_icl_trials(dataset, lm.tokenizer, 10, 10, 0,
                                          model_name_for_tokenizer=lm.name, model_prepend_bos=lm.prepend_bos,
                                          prepend_bos_token_used=not lm.prepend_bos, dataset_json_label=dataset.name))
        ft = load_trials(path)
        log(f"no --fixed-trials: made {path} from {dataset.name}, the model's default data")
    require_tokenizer_agrees(ft, lm.tokenizer)
    cfg = RunConfig(n_top_heads=a.n_top_heads, edit_layers=layers, max_trials=a.max_trials, mode=a.mode, resume=a.resume)
    result = run_runtime(lm, ft, out, cfg, quiet=a.quiet, log=log)
    write_runtime_dump(out, result, layers[0])
    if a.layout == "my_fv_project":
        from fv.ports.my_fv_project_layout import write_my_fv_project

        log(f"layout my_fv_project: {write_my_fv_project(out, ft, lm.tokenizer, model, n_trials=a.max_trials)}")
    if a.resume:
        log(f"resume: reused {', '.join(result.reused) or 'nothing'}; computed {', '.join(result.computed) or 'nothing'}")
    if not a.no_plots:
        _draw(out, log)
    from fv.pipelines.phenomenon import task_row

    main = task_row(lm, ft.id, out, result, layers)  # ICL accuracy (a forward pass per trial), the best layer
    print(story(out, lm, result, layers, main))
    if a.fixed_trials is None and defaults.run_tasks:
        print(task_story(lm, defaults, out, main, cfg, log, a.quiet, pictures=not a.no_plots))
    return 0


def _draw(folder: Path, log) -> None:
    """A run folder's pictures (``fv.plots.draw_run``), each logged; without matplotlib, the one line saying so."""
    from fv.plots import PlotsUnavailable, draw_run

    try:
        for p in draw_run(folder):
            log(f"picture: {p}")
    except PlotsUnavailable as exc:
        log(str(exc))


def story(out: Path, lm, result, layers: list[int], main: dict) -> str:
    """What a run shows, in a few lines: the trials, ICL accuracy (the clean prompts' top-1, 10 demos), zero-shot and
    shuffled-label accuracy without and with the FV at each edit layer (the best marked), and the top heads with their
    mean indirect effect (probability). ``main``: the run's ``fv.pipelines.phenomenon.task_row``."""
    from fv.io import read_json

    lines = [f"wrote runtime artifacts to {out}: {lm.name}, {len(result.prepared)} trials",
             f"  ICL accuracy (the clean prompts' top-1): {main['icl_accuracy']:.2f}"]
    sets = {L: read_json(out / f"step6_results_L{L}.json")["summary"]["by_prompt_set"] for L in layers}
    best = main["best_layer"]
    for L in layers:
        z, s = sets[L]["zero_shot"], sets[L]["shuffled"]
        mark = "  <- best" if len(layers) > 1 and L == best else ""
        lines.append(f"  edit layer {L}: zero-shot acc {z['acc_base']:.2f} -> {z['acc_with']:.2f} with the FV, shuffled "
                     f"{s['acc_base']:.2f} -> {s['acc_with']:.2f}, mean delta logprob {z['mean_delta_logprob']:+.4f}{mark}")
    shown = ", ".join(f"({h[0]}, {h[1]}) {float(h[2]):.3f}" for h in read_json(out / "top_heads.json")[:3])
    lines.append(f"  top heads (layer, head) mean indirect effect: {shown}")
    return "\n".join(lines)


def task_story(lm, defaults, out: Path, main: dict, cfg, log, quiet: bool, pictures: bool = True) -> str:
    """The default run's per-task lines: each of the model's ``run_tasks`` run as the main run was (10 trials from its
    dataset, the same stage parameters) into ``OUT/tasks/<task>/`` with its pictures, the main run's task taken from
    ``main`` (its ``task_row``); then the mean over the tasks."""
    import statistics

    from fv.pipelines.phenomenon import run_tasks

    first = next(iter(defaults.trial_sets))
    others = {t: defaults.universal_tasks[t] for t in defaults.run_tasks if t != first}
    rows = {first: {**main, "task": first}} if first in defaults.run_tasks else {}
    rows.update({r["task"]: r for r in run_tasks(lm, others, out / "tasks", cfg, log=log, quiet=quiet)})
    if pictures:
        for task in others:
            _draw(out / "tasks" / task, log)
    width = max(len(t) for t in rows)
    lines = [f"  per task ({main['n_trials']} trials each, the FV of its own top heads; the other tasks' runs in "
             f"{out / 'tasks'}):"]
    for t in defaults.run_tasks:
        r = rows[t]
        lines.append(f"    {t:<{width}}  ICL {r['icl_accuracy']:.2f}  zero-shot {r['zero_shot_accuracy']:.2f} -> "
                     f"{r['zero_shot_accuracy_with_fv']:.2f} at layer {r['best_layer']}  top head "
                     f"({r['top_head'][0]}, {r['top_head'][1]}) {r['top_head_effect']:.3f}")
    mean = {k: statistics.fmean(r[k] for r in rows.values()) for k in ("icl_accuracy", "zero_shot_accuracy", "zero_shot_accuracy_with_fv")}
    lines.append(f"    {'mean':<{width}}  ICL {mean['icl_accuracy']:.2f}  zero-shot {mean['zero_shot_accuracy']:.2f} -> "
                 f"{mean['zero_shot_accuracy_with_fv']:.2f}")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001 - argparse exposes no public type
    verbs = add_noun(sub, "runtime", help="run: the fv runtime end to end (M4)",
                     description="fv's own implementation of the stages. Earlier spelling: fv run.")
    u = verbs.add_parser("run", help="the fv runtime end to end (M4; alias: fv run)",
                         description="Mean activations, indirect effects, top heads, the FV, and its evaluation, with every "
                                   "artifact, its meta, and pictures of the indirect effects and of the evaluation per layer. "
                                   "The fixed-trials file is checked whole before the model loads. " + LOCK_HELP)
    add_model_args(u)
    u.add_argument("--fixed-trials", "--fixed_trials_path", dest="fixed_trials", default=None, help="fixed-trials JSON (default: 10 trials made from the model's default data, fv/model/default_inputs.py: a rule task "
                        "of fixtures/rule_tasks on the embedded default tiny-llama-fv, else fixtures/antonym_tiny.json)")
    u.add_argument("--out", default="results_fv/run", help="output folder (default results_fv/run)")
    add_stage_args(u)
    u.add_argument("--edit-layers", dest="edit_layers", default=None, help="several layers: A-B, a comma list, or all (overrides --edit-layer)")
    u.add_argument("--mode", choices=("exact", "fast"), default="exact", help="exact follows the reference bit for bit; fast reuses the clean pass")
    u.add_argument("--resume", action="store_true", help="skip stages whose outputs and meta already match the inputs")
    u.add_argument("--no-plots", dest="no_plots", action="store_true", help="write no pictures (they need matplotlib: pip install 'fv[plots]')")
    add_layout_arg(u, "OUT")
    add_quiet(u)
    u.set_defaults(func=cmd_run)
