"""Universal FV gate (``-m universal``): ``fv universal`` on the model's tasks equals the reference, task by task and
summed.

The model's universal tasks (``fv.model.default_inputs``: the five rule tasks on tiny-llama-fv, else
``fixtures/data/{antonym,country-capital,english-french,capitalize}.json``), each with the fixed trials M1/M2 make
(10 trials, 10 shots, seed 0; the first ``--max-trials`` used), run by ``fv universal``'s own code (``run_universal``,
``--task-filter all``, so that the gate compares every task whatever a model scores):

- each task's mean activations and indirect effects equal the reference's (bit for bit in exact mode);
- ``aie_by_task.pt`` is each task's trial-mean indirect effect, ``aie.pt`` the mean over the kept tasks of
  ``tasks.json``, ``universal_top_heads.json`` its top-k;
- each task's ``fv_universal.pt`` equals the reference's ``compute_function_vector`` on the task's mean
  activations, handed the AIE (from the reference's own indirect effects) as a ``(1, layers, heads)`` tensor;
  heads compared by (layer, head), the reference rounding scores to 4 decimals;
- each trial's ICL top-1 id equals the top-1 of the reference's clean forward on the clean prompt.

The other side is chosen as the stage gates' is (``fv.parity.sides.other_side``) and yields its values through the
same seam (``universal_values``): the live reference (``--src-root``), else the goldens it wrote: the tasks' own goldens
(``snapshots/<model>/<trials id>/t<n>/``, as M1's) and the universal ones (``snapshots/<model>/universal/t<n>/``),
both written by ``pytest -m "m1 or m7 or universal" --snapshot-update --src-root <src>``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fv.io import load_tensor_file, read_json
from fv.parity.compare import EXACT, diff_tensors, tolerance_for
from fv.parity.golden import GOLDEN_ARTIFACTS
from fv.parity.identity import model_identity
from fv.parity.sides import ReferenceSide
from fv.pytest_plugin import assert_golden, fv_params, parity_for, trials_for, universal_side

# on the default tiny models, the first (tiny-llama-fv) only: the gate is about the aggregation over tasks, and the
# 128k-vocabulary tiny-llama3tok (whose tokenizer M0-M2 gate) would triple CI's time for it; `--fv-model tiny-llama3tok`
# runs it there
pytestmark = [pytest.mark.universal, pytest.mark.first_tiny]


def pytest_generate_tests(metafunc):
    """``task``: the universal tasks of the session's models, in order (a model paired with another's task is
    deselected, ``fv.pytest_plugin.options.belongs``)."""
    if "task" in metafunc.fixturenames:
        from fv.model.default_inputs import default_inputs
        from fv.pytest_plugin import FVOptions

        opts = FVOptions.of(metafunc.config)
        names = [*opts.models, *opts.unavailable]
        metafunc.parametrize("task", list(dict.fromkeys(t for m in names for t in default_inputs(m).universal_tasks)))


def _trials(fv_options, lm) -> dict:
    """{task: its fixed trials}, in the model's order of its universal tasks."""
    from fv.model.default_inputs import default_inputs

    return {t: trials_for(fv_options, lm, path) for t, path in default_inputs(lm.path).universal_tasks.items()}


def _tol(fv_options, lm, side: dict):
    """Exact against the live reference in exact mode; against goldens (written on another CPU, docs/tolerances.md)
    or in fast mode, the tolerance of the dtype the model computes in."""
    return tolerance_for(lm.dtype, exact=fv_options.mode == "exact" and side["live"])


@pytest.fixture(scope="session")
def task_trials(fv_options, fv_model):
    return _trials(fv_options, fv_model)


@pytest.fixture(scope="session")
def universal_run(fv_options, fv_model, task_trials, tmp_path_factory, universal_runs):
    """``fv universal`` on the model's tasks' fixed trials: its output folder and the result it returned."""
    key = (fv_model.name, fv_options.mode, fv_options.max_trials, fv_options.n_top_heads, fv_options.edit_layer_for(fv_model.path, fv_model.info.n_layers))

    def make():
        from fv.pipelines.universal import UniversalConfig, run_universal

        out = tmp_path_factory.mktemp("universal") / fv_model.name
        cfg = UniversalConfig(out=str(out), fixed_trials=[str(ft.path) for ft in task_trials.values()], task_filter="all",
                              mode=fv_options.mode, max_trials=fv_options.max_trials, n_top_heads=fv_options.n_top_heads,
                              edit_layers=str(fv_options.edit_layer_for(fv_model.path, fv_model.info.n_layers)))
        result = run_universal(cfg, lm=fv_model)
        return out, result, {t: ft.path.stem for t, ft in task_trials.items()}

    return universal_runs.get(key, make)


def _task_dir(universal_run, task) -> Path:
    out, _result, names = universal_run
    return out / names[task]


def _folder(fv_options, lm) -> Path:
    from fv.parity.sides import universal_golden_dir
    from fv.paths import SNAPSHOT_ROOT

    return universal_golden_dir(SNAPSHOT_ROOT, lm.name, fv_options.max_trials)


def _identity(task_trials) -> dict:
    return {t: task_trials[t].sha256 for t in task_trials}


@pytest.fixture(scope="session")
def reference_side(fv_options, fv_model, task_trials, universal_reference_sides):
    """The other side's universal values (``fv.parity.sides``: ``universal_values``), chosen as the stage gates'
    other side is: the live reference (its indirect effects and mean activations from each task's parity run, its
    ``compute_function_vector`` on the AIE, its clean forward), else the goldens it wrote."""
    key = (fv_model.name, fv_options.max_trials, fv_options.n_top_heads, fv_options.mode)
    return universal_reference_sides.get(key, lambda: _reference_side(fv_options, fv_model, task_trials))


def _reference_side(fv_options, fv_model, task_trials) -> dict:
    from fv.errors import FVError
    from fv.parity.sides import trials_data

    side = universal_side(fv_options, fv_model)
    params = fv_params(fv_options, fv_model).as_dict()
    tasks = {t: trials_data(task_trials[t]) for t in task_trials}
    task_values = None
    if isinstance(side, ReferenceSide):  # a live side computes from its own values of each task
        runs = {t: parity_for(fv_options, fv_model, task_trials[t], require_reference=True) for t in task_trials}
        task_values = {t: {k: runs[t].src.values[k] for k in ("mean_activations", "indirect_effect")} for t in task_trials}
    try:
        return side.universal_values(tasks, params, task_values)
    except FileNotFoundError as exc:
        missing, refused = str(exc), None
    except FVError as exc:  # values made for another model or other trials: refused in one line
        missing, refused = None, str(exc)
    if refused:
        pytest.fail(refused, pytrace=False)
    pytest.skip(f"[fv: nothing to compare] {fv_model.name} x universal: no reference and {missing}. Make them "
                "with `pytest -m universal --snapshot-update --src-root PATH`")


def _golden(request, snapshot, fv_options, lm, task_trials, name, kind, ref_value, fv_value):
    """With --snapshot-update, write the reference's value as a golden (never fv's); otherwise nothing here."""
    if not request.config.option.update_snapshots:
        return
    from fv.io import write_json
    from fv.parity.snapshot import golden_extension

    folder = _folder(fv_options, lm)
    write_json(folder / "identity.json", {**_identity(task_trials), "model": model_identity(lm)})
    assert ref_value == snapshot.use_extension(golden_extension(folder, kind, EXACT))(name=name)


def _assert_tensor(src, mine, tol, what):
    d = diff_tensors(src, mine, tol)
    assert not d.shapes_differ and d.n_mismatch == 0, f"{what} differs from the reference ({tol.name}):\n" + "\n".join(d.lines(tol))
    if tol.name == "exact":
        assert torch.equal(src.to(torch.float32), mine.to(torch.float32)), f"{what}: not bit-identical"


# ---- the tasks' own goldens (the other side of each task's parity run without the reference) --------------------
@pytest.mark.parametrize("artifact", list(GOLDEN_ARTIFACTS))
def test_task_golden(fv_options, fv_model, task_trials, snapshot, request, task, artifact):
    run = parity_for(fv_options, fv_model, task_trials[task])
    assert_golden(run, artifact, snapshot, request.config.option.update_snapshots)


# ---- per task: effects, ICL top-1 -------------------------------------------------------------------------------
def test_task_effects_match_the_reference(fv_options, fv_model, task_trials, universal_run, task):
    """The task's mean activations and (trials, layers, heads) indirect effects, as ``fv universal`` wrote them."""
    run = parity_for(fv_options, fv_model, task_trials[task])
    folder = _task_dir(universal_run, task)
    tol = run.tolerance  # exact against the live reference in exact mode, the goldens' tolerance against goldens
    for name in ("mean_activations", "indirect_effect"):
        _assert_tensor(run.src.values[name], load_tensor_file(folder / f"{name}.pt"), tol, f"{task} {name}")


def test_icl_top1_matches_the_reference(fv_options, fv_model, task_trials, universal_run, reference_side, snapshot, request, task):
    """Per trial, the top-1 id of the clean ICL prompt; ICL accuracy and majority baseline follow from them."""
    from fv.runtime.universal import icl_accuracy, majority_baseline

    icl = read_json(_task_dir(universal_run, task) / "icl.json")
    theirs = reference_side["icl_top1"][task]
    _golden(request, snapshot, fv_options, fv_model, task_trials, f"icl_top1_{task}", "json", theirs, icl["top1_ids"])
    assert icl["top1_ids"] == theirs, f"{task}: ICL top-1 ids differ from {reference_side['description']}"
    targets = icl["target_ids"]
    assert icl["icl_accuracy"] == icl_accuracy(theirs, targets)
    assert icl["majority_baseline"] == majority_baseline(targets)


# ---- the aggregation and the filter -----------------------------------------------------------------------------
def test_aggregation_and_filter(fv_options, fv_model, task_trials, reference_side, universal_run, snapshot, request):
    from fv.runtime.universal import filter_tasks, universal_heads

    out, result, names = universal_run
    tasks = read_json(out / "tasks.json")
    assert tasks["task_filter"] == "all" and [t["name"] for t in tasks["tasks"]] == [names[t] for t in task_trials]
    assert all(t["kept"] for t in tasks["tasks"])
    for t, row in zip(task_trials, tasks["tasks"]):
        assert row["trials_sha256"] == task_trials[t].sha256
    by_task = load_tensor_file(out / "aie_by_task.pt")
    assert tuple(by_task.shape) == (len(task_trials), fv_model.info.n_layers, fv_model.info.n_heads)
    for k, t in enumerate(task_trials):
        assert torch.equal(by_task[k], load_tensor_file(_task_dir(universal_run, t) / "indirect_effect.pt").mean(dim=0))
    aie = load_tensor_file(out / "aie.pt")
    kept = [k for k, r in enumerate(tasks["tasks"]) if r["kept"]]
    assert torch.equal(aie, by_task[kept].mean(dim=0))
    heads = read_json(out / "universal_top_heads.json")
    assert [tuple(h) for h in heads] == [tuple(h) for h in universal_heads(aie, fv_options.n_top_heads)]
    vals, idx = torch.topk(aie.reshape(-1), fv_options.n_top_heads)
    assert [(l, h) for l, h, _ in heads] == [(int(i) // aie.shape[1], int(i) % aie.shape[1]) for i in idx]
    # the filter on the run's real accuracies: the strict rule, task by task
    rows = [{k: r[k] for k in ("name", "icl_accuracy", "majority_baseline")} for r in tasks["tasks"]]
    if any(r["icl_accuracy"] > r["majority_baseline"] for r in rows):
        got = filter_tasks(rows, "icl-baseline")
        assert [g["kept"] for g in got] == [r["icl_accuracy"] > r["majority_baseline"] for r in rows]
    else:
        from fv.errors import FVError

        with pytest.raises(FVError, match="--task-filter all"):
            filter_tasks(rows, "icl-baseline")
    # against the reference: the AIE from its indirect effects, its top-k
    _golden(request, snapshot, fv_options, fv_model, task_trials, "aie", "tensor", reference_side["aie"], aie)
    _golden(request, snapshot, fv_options, fv_model, task_trials, "universal_top_heads", "json", reference_side["heads"], heads)
    _assert_tensor(reference_side["aie"], aie, _tol(fv_options, fv_model, reference_side), "AIE")
    assert [(l, h) for l, h, _ in heads] == [(int(l), int(h)) for l, h, _ in reference_side["heads"]], \
        f"universal heads differ from {reference_side['description']}"
    if _tol(fv_options, fv_model, reference_side).is_exact:
        assert [s for *_, s in heads] == [float(s) for *_, s in reference_side["heads"]]


def test_universal_fv_matches_compute_function_vector(fv_options, fv_model, task_trials, universal_run, reference_side,
                                                      snapshot, request, task):
    """The task's FV from the universal heads = the reference's compute_function_vector fed the AIE as (1, L, H)."""
    mine = load_tensor_file(_task_dir(universal_run, task) / "fv_universal.pt")
    theirs = reference_side["fv"][task]
    _golden(request, snapshot, fv_options, fv_model, task_trials, f"fv_universal_{task}", "tensor", theirs, mine)
    assert tuple(mine.shape) == (fv_model.info.d_model,)
    _assert_tensor(theirs, mine.to(torch.float32), _tol(fv_options, fv_model, reference_side), f"{task} universal FV")


def test_task_evaluation_written(fv_options, fv_model, universal_run, task):
    """Each task's universal FV is evaluated zero-shot at the edit layer, with and without it."""
    ev = read_json(_task_dir(universal_run, task) / "universal_eval.json")
    assert ev["edit_layers"] == [fv_options.edit_layer_for(fv_model.path, fv_model.info.n_layers)]
    zs = ev["by_layer"][str(fv_options.edit_layer_for(fv_model.path, fv_model.info.n_layers))]["by_prompt_set"]["zero_shot"]
    assert zs["n"] == min(fv_options.max_trials, 10)
    rows = [r for r in ev["trials"][str(fv_options.edit_layer_for(fv_model.path, fv_model.info.n_layers))] if r["prompt_set"] == "zero_shot"]
    assert zs["acc_with"] == sum(r["accuracy_with"] for r in rows) / len(rows)
