"""The parity stages, each declared once: its name, the file a parity dump writes for it, whether its values are per
trial, the goldens it is kept as, the dims of its tensor, and whether its values are effects.

Every table the suite reads about stages is derived from ``REGISTRY`` here: the stage order (``STAGES``), the
per-trial stages, the files of a stage dump (``STAGE_FILES``, read by ``fv parity diff`` and the reports), the golden
artifacts and their kinds (``GOLDEN_ARTIFACTS``, the syrupy snapshots), the dims that name where a NaN or an
infinity first appears (``STAGE_DIMS``), the stages a degenerate verdict looks at (``EFFECT_STAGES``) and how each
stage's values are compared (``compared_as``: the comparer of ``fv.parity.comparers`` for that kind of value). The
reference function behind each stage is named by the reference adapter alone (``fv.reference.stages``), keyed by
these names. This module imports nothing of fv: any layer may read it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """One parity stage.

    ``file``: the file a stage dump holds it in (``.json`` for JSON-like values, ``.pt`` for tensors);
    ``per_trial``: its values are keyed ``"<trial_id>:<trial_idx>"`` (mismatches are counted per trial);
    ``goldens``: ``(artifact, kind)`` pairs, kind ``"json"`` or ``"tensor"``, in the order the golden tests run;
    ``dims``: the names of its tensor's dims (None for JSON values; ``"trial"`` and ``"slot"`` dims are labelled by
    trial key and slot label where values differ); ``effect``: its values are indirect effects (differences of
    probabilities) or heads ranked by them; ``compared_as``: the kind of value, which picks its comparer
    (``"tensor"``, ``"ranked_heads"``: ``[layer, head, score]`` rows, ``"json"``, ``"scores"``: JSON whose records
    are scored prompts with ranked token ids and a logits hash); ``trials_under``: for a per-trial JSON value, the
    key its trials sit under (``""``: its top-level keys are the trials); ``ranked_by``: the stage whose values rank
    this one's (two heads may trade ranks only where those values cannot tell them apart).
    """

    name: str
    file: str
    per_trial: bool
    goldens: tuple[tuple[str, str], ...]
    dims: tuple[str, ...] | None = None
    effect: bool = False
    compared_as: str = ""
    trials_under: str | None = None
    ranked_by: str | None = None

    def __post_init__(self) -> None:
        if not self.compared_as:
            object.__setattr__(self, "compared_as", "tensor" if self.dims is not None else "json")

    @property
    def kind(self) -> str:
        """``"tensor"`` or ``"json"``: how its values are stored and compared."""
        return "tensor" if self.dims is not None else "json"


REGISTRY: tuple[Stage, ...] = (
    Stage("prompt", "prompt.json", per_trial=True, goldens=(("prompt", "json"),), trials_under=""),
    Stage("slot", "slot.json", per_trial=True, goldens=(("dummy_labels", "json"), ("slot", "json")), trials_under="trials"),
    Stage("mean_activations", "mean_activations.pt", per_trial=False, goldens=(("mean_activations", "tensor"),),
          dims=("layer", "head", "slot", "head_dim")),
    Stage("indirect_effect", "indirect_effect.pt", per_trial=True, goldens=(("indirect_effect", "tensor"),),
          dims=("trial", "layer", "head"), effect=True),
    Stage("top_heads", "top_heads.json", per_trial=False, goldens=(("top_heads", "json"),), effect=True,
          compared_as="ranked_heads", ranked_by="indirect_effect"),
    Stage("fv", "fv.pt", per_trial=False, goldens=(("fv", "tensor"),), dims=("d_model",)),
    Stage("injection", "injection.json", per_trial=True, goldens=(("injection", "json"),), compared_as="scores",
          trials_under=""),
)

BY_NAME: dict[str, Stage] = {s.name: s for s in REGISTRY}
STAGES: tuple[str, ...] = tuple(s.name for s in REGISTRY)  # in data-flow order
PER_TRIAL_STAGES: tuple[str, ...] = tuple(s.name for s in REGISTRY if s.per_trial)
STAGE_FILES: dict[str, str] = {s.name: s.file for s in REGISTRY}
# artifact name -> (kind, the stage it belongs to)
GOLDEN_ARTIFACTS: dict[str, tuple[str, str]] = {a: (kind, s.name) for s in REGISTRY for a, kind in s.goldens}
STAGE_DIMS: dict[str, tuple[str, ...]] = {s.name: s.dims for s in REGISTRY if s.dims is not None}
EFFECT_STAGES: tuple[str, ...] = tuple(s.name for s in REGISTRY if s.effect)


def stage(name: str) -> Stage:
    """The stage named ``name``. Raises ``KeyError`` naming the stages there are."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no parity stage {name!r}; the stages are {', '.join(STAGES)}") from None
