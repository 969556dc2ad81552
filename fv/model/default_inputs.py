"""What a model is run and gated on when nobody names its inputs: one place for the fixed-trials datasets of M0-M2
(and the stages after them), the universal gate's tasks, M7's relation CSV and the edit layer.

The trained tiny model where function vectors work (``tiny-llama-fv``, docs/trained_model.md) has its rule tasks'
test words (``fixtures/rule_tasks``, never in a training sequence) and edit layer 2 (of 4: where each task's own
FV lifts zero-shot accuracy most, mean over the tasks, 0.76; and where the universal FV of ``fv universal`` over the
five tasks lifts every task's, docs/trained_model.md). Every other model, a user's included, has the antonym data
(``fixtures/antonym_tiny.json``, ``fixtures/data/antonym.json``), the four tasks of ``fixtures/data``,
``fixtures/relation_tiny.csv`` and layer 9 (the reference's scripts' default, for Llama-3.1-8B's 32 layers), or a
third of the depth for a model too shallow for it (``default_edit_layer``: layer 2 of a 6-layer tiny family model).
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
    is added after (None: ``default_edit_layer``'s rule by depth); ``run_tasks``: the tasks ``fv runtime run`` given no trials measures one by one after its main run
    (of the first trial set), for its per-task story (none: the main run alone)."""

    trial_sets: dict[str, Path]
    universal_tasks: dict[str, Path]
    relation_csv: Path
    edit_layer: int | None
    run_tasks: tuple[str, ...] = ()


def _antonym() -> DefaultInputs:
    data = FIXTURES / "data"
    return DefaultInputs(
        trial_sets={"antonym_tiny": FIXTURES / "antonym_tiny.json", "antonym": data / "antonym.json"},
        universal_tasks={t: data / f"{t}.json" for t in ("antonym", "country-capital", "english-french", "capitalize")},
        relation_csv=FIXTURES / "relation_tiny.csv", edit_layer=None)


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


def default_edit_layer(model: str | Path | None, n_layers: int) -> int:
    """The edit layer ``model`` (a name or folder with ``n_layers`` layers) is run and gated at when none is given: its
    own default inputs' layer, else layer 9 (``REFERENCE_EDIT_LAYER``) where the model has more than 9 layers, else a
    third of its depth (``n_layers // 3``), so that the default always fits."""
    own = default_inputs(model).edit_layer
    if own is not None:
        return own
    return REFERENCE_EDIT_LAYER if REFERENCE_EDIT_LAYER < n_layers else n_layers // 3
