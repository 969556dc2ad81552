"""The sides of a comparison, behind one protocol.

A gate compares two sides stage by stage. A side is whatever, given the trials and the parameters, yields the
stages' values: the live reference (own or shared mode), the snapshot goldens, a user's goldens, fv's runtime
(exact or fast), and, through the same protocol, any port of the reference to another runtime. The engine
(``fv.parity.run``) asks each side two things and knows nothing else of it:

``describe(trials, params) -> dict``
    Before any stage. What the report records of the side: ``kind`` (``reference``, ``golden``, ``user goldens``,
    ``fv``, a port's name), ``description`` (in words, which side), ``live`` (True when it computes on the model
    now, so an exact comparison is possible; False for values made earlier), ``dtype`` (the dtype its values were
    computed in, ``"float32"`` ...; None for the model's own), ``notes`` (lines for the report), ``compat`` (the
    reference's FV addition applied to tensor outputs) and ``facts`` (keys the report's meta records: the door's
    findings). A side that cannot run these trials on this model raises ``FVError`` here, in one line.
``stage_values(trials, params) -> dict``
    ``{"values": {stage: value}, "durations": {stage: seconds}, "injection_error": str | None, "origin": str}``:
    the stages of ``fv.parity.registry`` it holds (a side that lacks a stage leaves it out, and it is not
    compared), ``origin`` saying whether the values were computed, read from a cache or from goldens; and
    optionally ``notes``, the side's notes as they stand once it has computed (they replace ``describe``'s: a
    side may learn something while it runs, such as how it loaded a dependency).
``universal_values(tasks, params, task_values) -> dict`` (optional: the universal-FV gate's other side)
    ``tasks``: ``{task name: trials}``; ``task_values``: ``{task name: {"mean_activations", "indirect_effect"}}``,
    the side's own stage values of each task (a side that reads its values from files may ignore them). Returns
    ``{"aie": (layers, heads), "heads": [[layer, head, score]], "fv": {task: (d_model,)}, "icl_top1": {task:
    [token id per trial]}, "live": bool, "description": str}``. A side without them raises ``FileNotFoundError``;
    values made for another model or other trials raise ``FVError``.

Both pass plain data only (str, int, float, bool, lists, dicts, tensors): ``trials`` is ``{"path": str,
"sha256": str, "file": <the fixed-trials file's dict>}`` and ``params`` is ``Params.as_dict()`` (``n_top_heads``,
``edit_layer``, ``max_trials``, ``token_class_idx``, ``mode``). No fv type crosses, so a side that cannot import
this fv (the reference's worker, a user's port in its own process) implements it as it is. Stage values: tensors
for ``mean_activations`` (layers, heads, slots, head_dim), ``indirect_effect`` (trials, layers, heads) and ``fv``
(d_model,) float32; JSON-like values for ``prompt``, ``slot``, ``top_heads`` and ``injection`` (docs/reference.md).

The other side is chosen once per (model, trials) by :func:`other_side`: a user's goldens when given, else the
live reference when there is one, else the snapshot goldens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, runtime_checkable

import torch

from fv.model.loading import LoadedModel
from fv.parity.golden import check_identity, golden_dir, load_goldens, to_jsonable
from fv.parity.stages import Params, StageValues, fv_stage_values
from fv.runtime.trials import FixedTrials, Trial, validate_trials

if TYPE_CHECKING:
    from fv.parity.src_cache import SrcCache
    from fv.parity.user_goldens import GoldenSource


@runtime_checkable
class Side(Protocol):
    """One side of a comparison (the module's docstring gives the protocol in full)."""

    def describe(self, trials: dict, params: dict) -> dict: ...

    def stage_values(self, trials: dict, params: dict) -> dict: ...


# ---- plain data in and out ---------------------------------------------------------------------------------
def trials_data(trials: FixedTrials) -> dict:
    """A loaded fixed-trials file as the protocol passes it: ``{"path", "sha256", "file"}``."""
    return {"path": str(trials.path), "sha256": trials.sha256, "file": trials.raw}


def fixed_trials_of(data: dict) -> FixedTrials:
    """``trials_data``'s dict loaded back (validated as a file is where it enters)."""
    path = Path(data["path"])
    return FixedTrials(path, data["file"], validate_trials(data["file"], str(path)), data["sha256"])


def params_of(data: dict) -> Params:
    """``Params.as_dict()`` back as ``Params``."""
    return Params(**data)


def normalize(sv: StageValues) -> StageValues:
    """JSON-side values as a golden file would hold them, so live and golden sides compare alike."""
    out = StageValues(values=dict(sv.values), durations=dict(sv.durations))
    for k in ("prompt", "slot", "top_heads", "injection"):
        if k in out.values:
            out.values[k] = to_jsonable(out.values[k])
    return out


def values_of(got: dict) -> StageValues:
    """A side's ``stage_values`` answer as the engine's ``StageValues``."""
    return StageValues(values=dict(got["values"]), durations=dict(got.get("durations") or {}))


def answer(sv: StageValues, origin: str, injection_error: str | None = None) -> dict:
    """``StageValues`` as a side's ``stage_values`` answer."""
    return {"values": dict(sv.values), "durations": dict(sv.durations), "injection_error": injection_error, "origin": origin}


# ---- the live reference ------------------------------------------------------------------------------------
@dataclass
class LiveSource:
    """The reference computed live: ``compute`` returns its stage values and, when its injection cannot be
    trusted, why. Built by ``fv.reference`` so this engine never needs the reference's names."""

    compute: Callable[[LoadedModel, Sequence[Trial], Params, dict, dict], tuple[StageValues, str | None]]
    notes: list[str]
    compat: bool
    description: str
    # run before any stage: refuses, in one line, a pairing of model and trials the other side cannot run, and
    # returns what the report records of that side (its model mode, dtype, attention, BOS rule)
    check: Callable[[LoadedModel, FixedTrials], dict] | None = None
    # what its values depend on beyond the trials and parameters (its files, the model it computes on), given
    # fv's model and a folder for remembered weight hashes; with ``cache`` set, the values are kept on disk
    key_parts: Callable[[LoadedModel, Path | None], dict] | None = None
    cache: "SrcCache | None" = None
    # the FV and injection stages recomputed by the other side for a given head list on its own mean activations
    # (``{"fv", "injection"}``): where fv's top heads differ from its own only by tied heads (fast mode)
    refit: Callable[[LoadedModel, Sequence[Trial], Params, torch.Tensor, list], dict] | None = None
    # the universal-FV gate's values for given tasks: (fv's model, {task: trials}, {task: mean activations}, AIE,
    # number of top heads) -> {"heads", "fv", "icl_top1"} (``fv.parity.sides`` module docstring)
    universal: Callable[[LoadedModel, dict, dict, torch.Tensor, int], dict] | None = None


def src_with_origin(source: LiveSource, lm: LoadedModel, trials: FixedTrials, params: Params
                    ) -> tuple[StageValues, str | None, str]:
    """The source's values, its injection error, and whether they were computed or read from its cache."""
    def compute() -> tuple[StageValues, str | None]:
        sv, error = source.compute(lm, trials.subset(params.max_trials), params, trials.meta.get("prefixes"),
                                   trials.meta.get("separators"))
        return normalize(sv), error

    if source.cache is None or source.key_parts is None:
        return (*compute(), "computed")
    from fv.parity.src_cache import cache_key

    key = cache_key(source.key_parts(lm, source.cache.root / "weights_sha256"), trials, params)
    return source.cache.get_or_compute(key, compute)


@dataclass
class ReferenceSide:
    """The live reference on ``lm`` (its own copy or fv's object, as ``source`` was built)."""

    source: LiveSource
    lm: LoadedModel

    def describe(self, trials: dict, params: dict) -> dict:
        facts = self.source.check(self.lm, fixed_trials_of(trials)) if self.source.check is not None else {}
        return {"kind": "reference", "description": self.source.description, "live": True, "dtype": None, "notes": self._notes(),
                "compat": bool(self.source.compat), "facts": facts}

    def _notes(self) -> list[str]:
        return list(self.source.notes) + (["--src-compat: the reference's FV addition applied to tensor outputs"]
                                          if self.source.compat else [])

    def stage_values(self, trials: dict, params: dict) -> dict:
        sv, error, origin = src_with_origin(self.source, self.lm, fixed_trials_of(trials), params_of(params))
        return {**answer(sv, origin, error), "notes": self._notes()}

    def refit(self, trials: dict, params: dict, mean_activations: torch.Tensor, heads: list) -> dict | None:
        """The FV and injection stages recomputed by the reference for ``heads`` on its own mean activations (None
        when its source cannot)."""
        if self.source.refit is None:
            return None
        ft, p = fixed_trials_of(trials), params_of(params)
        return self.source.refit(self.lm, ft.subset(p.max_trials), p, mean_activations, heads)

    def universal_values(self, tasks: dict, params: dict, task_values: dict) -> dict:
        """The reference's universal values, computed live: the AIE over the tasks from its own indirect effects
        (every task kept), its ``compute_function_vector`` on each task's mean activations and that AIE, its clean
        forward's top-1 per trial."""
        from fv.runtime.universal import aie_by_task, average_indirect_effect

        if self.source.universal is None:
            raise FileNotFoundError(f"{self.source.description} computes no universal values")
        names = list(tasks)
        aie = average_indirect_effect(aie_by_task([task_values[t]["indirect_effect"] for t in names]), [True] * len(names))
        subsets = {t: fixed_trials_of(tasks[t]).subset(params.get("max_trials")) for t in names}
        got = self.source.universal(self.lm, subsets, {t: task_values[t]["mean_activations"] for t in names}, aie,
                                    int(params["n_top_heads"]))
        return {**got, "aie": aie, "live": True, "description": "the live reference"}


# ---- goldens ------------------------------------------------------------------------------------------------
@dataclass
class SnapshotSide:
    """The snapshot goldens of ``lm`` and the trials, under ``snapshot_root`` (written by ``--snapshot-update``)."""

    lm: LoadedModel
    snapshot_root: Path

    def _folder(self, trials: dict, params: dict) -> tuple[Path, FixedTrials]:
        ft = fixed_trials_of(trials)
        return golden_dir(self.snapshot_root, self.lm.name, ft.id, len(ft.subset(params.get("max_trials")))), ft

    def describe(self, trials: dict, params: dict) -> dict:
        folder, ft = self._folder(trials, params)
        if load_goldens(folder) is None:
            raise FileNotFoundError(f"no goldens in {folder}")
        # goldens of another model: refused before any stage
        identity_notes = check_identity(folder, self.lm, ft, ft.subset(params.get("max_trials")))
        prov_path = folder.parent / f"{folder.name}.meta.json"
        prov = json.loads(prov_path.read_text()) if prov_path.is_file() else {}
        # imported goldens record the dtype they were made in; the reference's own were made in the model's
        notes = prov.get("notes", []) + identity_notes
        return {"kind": "golden", "live": False, "dtype": prov.get("golden_dtype"), "notes": notes,
                "compat": any("src-compat" in n for n in notes), "facts": {},
                "description": f"goldens in {folder}" + (f" (imported from {prov['imported_from']})" if prov.get("imported_from") else "")}

    def stage_values(self, trials: dict, params: dict) -> dict:
        folder, _ft = self._folder(trials, params)
        sv = load_goldens(folder)
        if sv is None:
            raise FileNotFoundError(f"no goldens in {folder}")
        return answer(sv, f"goldens {folder}")

    def universal_folder(self, params: dict) -> Path:
        """Where the universal gate's goldens of this model and trial count live."""
        return universal_golden_dir(self.snapshot_root, self.lm.name, params.get("max_trials"))

    def universal_values(self, tasks: dict, params: dict, task_values: dict | None = None) -> dict:
        """The universal goldens the reference wrote (``aie``, ``universal_top_heads``, ``fv_universal_<task>``,
        ``icl_top1_<task>``), refused in one line when made for another model or other trials."""
        from fv.errors import FVError
        from fv.parity.golden import EXTENSIONS, deserialize
        from fv.parity.identity import identity_problem, model_identity

        folder = self.universal_folder(params)
        meta = folder / "identity.json"
        if not meta.is_file():
            raise FileNotFoundError(f"no universal goldens in {folder}")
        recorded = json.loads(meta.read_text())
        regenerate = "`pytest -m universal --snapshot-update --src-root PATH`"
        # goldens of another model (a checkpoint sweep, another seed) are refused in one line (fv.parity.identity)
        problem = identity_problem(recorded.pop("model", None), model_identity(self.lm), f"the universal goldens in {folder}",
                                   regenerate)
        if problem:
            raise FVError(problem)
        if recorded != {t: tasks[t]["sha256"] for t in tasks}:
            raise FVError(f"the universal goldens in {folder} were made from other trials than these; regenerate them "
                          f"with {regenerate}")

        def load(name: str, kind: str) -> Any:
            return deserialize(kind, (folder / f"{name}.{EXTENSIONS[kind]}").read_bytes())

        return {"aie": load("aie", "tensor"), "heads": load("universal_top_heads", "json"),
                "fv": {t: load(f"fv_universal_{t}", "tensor") for t in tasks},
                "icl_top1": {t: load(f"icl_top1_{t}", "json") for t in tasks}, "live": False,
                "description": f"goldens {folder}"}


def universal_golden_dir(snapshot_root: Path, model: str, max_trials: int | None) -> Path:
    """``<snapshot_root>/<model>/universal/t<max_trials>``: the universal gate's goldens."""
    return Path(snapshot_root) / model / "universal" / f"t{max_trials}"


@dataclass
class UserGoldenSide:
    """A user's golden folder as src wrote it (``--golden-dir``), checked against the model and trials when built."""

    golden: "GoldenSource"

    def describe(self, trials: dict, params: dict) -> dict:
        g = self.golden
        return {"kind": g.kind, "description": g.description, "live": False, "dtype": g.dtype, "notes": list(g.notes),
                "compat": any("src-compat" in n for n in g.notes), "facts": {}}

    def stage_values(self, trials: dict, params: dict) -> dict:
        return answer(self.golden.values, self.golden.description)


# ---- fv's runtime -------------------------------------------------------------------------------------------
@dataclass
class RuntimeSide:
    """fv's runtime on ``lm``, in the parameters' mode (exact or fast); every prompt tokenized and labelled once."""

    lm: LoadedModel

    def describe(self, trials: dict, params: dict) -> dict:
        return {"kind": "fv", "description": f"the fv runtime ({params.get('mode', 'exact')} mode)", "live": True,
                "dtype": None, "notes": [], "compat": False, "facts": {}}

    def stage_values(self, trials: dict, params: dict) -> dict:
        ft, p = fixed_trials_of(trials), params_of(params)
        sv = fv_stage_values(self.lm, ft.subset(p.max_trials), p, ft.meta.get("prefixes"), ft.meta.get("separators"))
        return answer(normalize(sv), "computed")


@dataclass
class GivenSide:
    """Values one side computed earlier (fv's, for a second comparison with the same other side)."""

    values: StageValues
    kind: str = "fv"
    origin: str = "computed"

    def describe(self, trials: dict, params: dict) -> dict:
        return {"kind": self.kind, "description": f"{self.kind} values given", "live": True, "dtype": None, "notes": [],
                "compat": False, "facts": {}}

    def stage_values(self, trials: dict, params: dict) -> dict:
        return answer(normalize(self.values), self.origin)


def other_side(lm: LoadedModel, reference: LiveSource | None = None, golden: "GoldenSource | None" = None,
               snapshot_root: Path | None = None) -> Any:
    """The side fv is compared with, chosen once: a user's goldens when given, else the live reference when there
    is one, else the snapshot goldens (``fv.paths.SNAPSHOT_ROOT`` unless ``snapshot_root``)."""
    if golden is not None:
        return UserGoldenSide(golden)
    if reference is not None:
        return ReferenceSide(reference, lm)
    from fv.paths import SNAPSHOT_ROOT

    return SnapshotSide(lm, Path(snapshot_root) if snapshot_root is not None else SNAPSHOT_ROOT)


def dtype_of(name: str | None, default: torch.dtype) -> torch.dtype:
    """A side's ``dtype`` field as a torch dtype (``default`` when the side computes in the model's)."""
    if not name:
        return default
    dt = getattr(torch, str(name).replace("torch.", ""), None)
    return dt if isinstance(dt, torch.dtype) else default
