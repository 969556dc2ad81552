"""What a model is run and gated on when nobody names its inputs: one place for the fixed-trials datasets of M0-M2
(and the stages after them), the universal gate's tasks, M7's relation CSV and the edit layer.

The trained tiny model where function vectors work (``tiny-llama-fv``, docs/trained_model.md) has its rule tasks'
test words (``fixtures/rule_tasks``, never in a training sequence) and edit layer 2 (of 4: where each task's own
FV lifts zero-shot accuracy most, mean over the tasks, 0.76; and where the universal FV of ``fv universal`` over the
five tasks lifts every task's, docs/trained_model.md). Every other model, a user's included, has the antonym data
(``fixtures/antonym_tiny.json``, ``fixtures/data/antonym.json``), the four tasks of ``fixtures/data``,
``fixtures/relation_tiny.csv`` and layer 9 (the reference's scripts' default, for Llama-3.1-8B's 32 layers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fv.paths import FIXTURES

EMBEDDED_DEFAULT = "tiny-llama-fv"  # `fv runtime run` with no --model, and the first model of the gates' defaults
REFERENCE_EDIT_LAYER = 9  # natural_text_eval.py, portability_eval.py: --edit_layer default 9


@dataclass(frozen=True)
class DefaultInputs:
    """A model's default inputs. ``trial_sets`` and ``universal_tasks``: name -> an ICL dataset JSON in the reference's
    format (``[{"input", "output"}]``); ``relation_csv``: ``id,ex_A,ex_B``; ``edit_layer``: the layer (0-based) the FV
    is added after; ``run_tasks``: the tasks ``fv runtime run`` given no trials measures one by one after its main run
    (of the first trial set), for its per-task story (none: the main run alone)."""

    trial_sets: dict[str, Path]
    universal_tasks: dict[str, Path]
    relation_csv: Path
    edit_layer: int
    run_tasks: tuple[str, ...] = ()


def _antonym() -> DefaultInputs:
    data = FIXTURES / "data"
    return DefaultInputs(
        trial_sets={"antonym_tiny": FIXTURES / "antonym_tiny.json", "antonym": data / "antonym.json"},
        universal_tasks={t: data / f"{t}.json" for t in ("antonym", "country-capital", "english-french", "capitalize")},
        relation_csv=FIXTURES / "relation_tiny.csv", edit_layer=REFERENCE_EDIT_LAYER)


def _rule_tasks() -> DefaultInputs:
    from fv.model.rule_tasks import RELATION_CSV, TASK_DIR, TASKS, task_file

    return DefaultInputs(trial_sets={t: task_file(t) for t in ("lowercase_first_letter", "next_letter")},
                         universal_tasks={t: task_file(t) for t in TASKS}, relation_csv=TASK_DIR / RELATION_CSV,
                         edit_layer=2, run_tasks=TASKS)


# models with inputs of their own, by tiny-model name
_OWN = {"tiny-llama-fv": _rule_tasks}


def default_inputs(model: str | Path | None) -> DefaultInputs:
    """``model``'s default inputs: by tiny-model name, or by folder when it is a committed tiny model's folder (the
    trained model given as a path); anything else, the antonym data at layer 9."""
    from fv.model.tiny import COMMITTED_TINY, TINY_MODELS

    name = str(model or "")
    if name not in _OWN and model:
        here = Path(name).expanduser()
        folder = here.resolve() if here.is_dir() else None
        name = next((n for n in COMMITTED_TINY if folder == (FIXTURES / TINY_MODELS[n].stem).resolve()), name)
    return _OWN.get(name, _antonym)()
