"""A user's own goldens: the files src wrote on their GPU under ``results/<dataset>/<fixed_trials_id>/``
(docs/reference.md, "Artifacts"): ``<dataset>_mean_head_activations_FIXED.pt``, ``<dataset>_dummy_labels.json`` and
``<dataset>_indirect_effect.pt``.

They drive M1/M2 directly (``pytest --golden-dir DIR``), compared within the tolerance of the dtype they were made
in, or become snapshots under ``snapshots/`` with their provenance (``fv golden import``). Either way they are
first checked against the model and the trials: a file that does not fit says which file, what was expected and
what was found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fv.errors import FVError
from fv.io import read_json, sha256_file, write_bytes, write_json
from fv.parity.golden import EXTENSIONS, GOLDEN_ARTIFACTS, golden_dir, serialize
from fv.parity.stages import StageValues, fv_dummy_labels
from fv.parity.tensor_diff import diff_tensors
from fv.parity.tolerance import Tolerance, tolerance_for

USER_GOLDENS = "user goldens"  # ParityRun.source for a run against --golden-dir
# golden artifact -> the file src writes for it, by dataset name
USER_FILES = {
    "mean_activations": "{dataset}_mean_head_activations_FIXED.pt",
    "dummy_labels": "{dataset}_dummy_labels.json",
    "indirect_effect": "{dataset}_indirect_effect.pt",
}
_FIX = "Check that --golden-dir, the model and the fixed trials are the ones src used."
REGENERATE = ("src on this model and trials (`fv reference run --src-root SRC --model MODEL --fixed-trials FT --out DIR` writes "
              "the same files with the identity), or give the model and trials the goldens were made with")


@dataclass
class GoldenSource:
    """Golden stage values from somewhere other than the snapshot folder, and how to tell and compare them."""

    values: StageValues
    description: str
    tolerance: Tolerance
    notes: list[str] = field(default_factory=list)
    kind: str = USER_GOLDENS
    n_trials: int = 0
    dtype: str | None = None  # the dtype the goldens were computed in (their tolerance's)


@dataclass
class UserGoldens:
    folder: Path
    dataset: str
    files: dict[str, Path]
    mean_activations: torch.Tensor
    dummy_labels: list
    indirect_effect: torch.Tensor

    @property
    def n_trials(self) -> int:
        return int(self.indirect_effect.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.mean_activations.dtype

    def stage_values(self) -> StageValues:
        return StageValues(values={"slot": {"dummy_labels": self.dummy_labels}, "mean_activations": self.mean_activations,
                                   "indirect_effect": self.indirect_effect})


def _dataset_of(folder: Path) -> str:
    suffix = USER_FILES["mean_activations"].format(dataset="")
    hits = sorted(p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}"))
    if len(hits) != 1:
        found = sorted(p.name for p in folder.iterdir() if p.is_file())[:8]
        raise FVError(f"golden folder {folder}: expected one <dataset>{suffix} (src writes it under results/<dataset>/"
                      f"<fixed_trials_id>/), found {len(hits)} ({', '.join(hits) or 'files: ' + (', '.join(found) or 'none')}). "
                      "Give the folder that holds one dataset's goldens.")
    return hits[0]


def _tensor(path: Path, ndim: int, what: str) -> torch.Tensor:
    from fv.io import load_tensor_file

    t = load_tensor_file(path)
    if not isinstance(t, torch.Tensor) or t.ndim != ndim:
        found = f"a {t.ndim}-D tensor {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise FVError(f"{path}: expected a {ndim}-D tensor ({what}), found {found}. {_FIX}")
    return t


def load_user_goldens(folder: str | Path) -> UserGoldens:
    """Read the three files of a user's golden folder (tensors with weights_only=True)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FVError(f"golden folder {folder} not found. Give results/<dataset>/<fixed_trials_id>/ as src wrote it.")
    dataset = _dataset_of(folder)
    files = {k: folder / v.format(dataset=dataset) for k, v in USER_FILES.items()}
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        raise FVError(f"golden folder {folder}: expected {', '.join(p.name for p in files.values())}; "
                      f"{', '.join(missing)} missing. Copy the whole folder src wrote.")
    raw = read_json(files["dummy_labels"], "dummy labels file")
    labels = raw.get("labels") if isinstance(raw, dict) else raw  # src writes {"labels": [...]}; a bare list is read too
    if not isinstance(labels, list) or not all(isinstance(x, list) and len(x) == 2 for x in labels):
        raise FVError(f"{files['dummy_labels']}: expected {{\"labels\": [[0, \"bos_token\"], ...]}}, found "
                      f"{type(raw).__name__} with keys {sorted(raw) if isinstance(raw, dict) else '-'}. {_FIX}")
    return UserGoldens(folder, dataset, files,
                       _tensor(files["mean_activations"], 4, "layers, heads, slots, head_dim"),
                       [[int(p), str(l)] for p, l in labels],
                       _tensor(files["indirect_effect"], 3, "trials, layers, heads"))


def check_fit(ug: UserGoldens, lm: Any, trials: Any) -> None:
    """The goldens fit this model and these trials: layers, heads, head size, slot count, trial count."""
    info = lm.info
    n_shots = trials.n_shots
    dummy = fv_dummy_labels(lm, trials.trials, trials.meta.get("prefixes"), trials.meta.get("separators"))
    n_slots = len(dummy)
    if len(ug.dummy_labels) != n_slots:
        raise FVError(f"{ug.files['dummy_labels']}: expected {n_slots} slots ({n_shots} shots of {trials.id} on {lm.name}'s "
                      f"tokenizer), found {len(ug.dummy_labels)}. {_FIX}")
    want = (info.n_layers, info.n_heads, n_slots, info.head_dim)
    if tuple(ug.mean_activations.shape) != want:
        raise FVError(f"{ug.files['mean_activations']}: expected shape {want} (layers, heads, slots, head_dim of {lm.name} "
                      f"with {n_slots} slots), found {tuple(ug.mean_activations.shape)}. {_FIX}")
    ie = tuple(ug.indirect_effect.shape)
    if ie[1:] != (info.n_layers, info.n_heads):
        raise FVError(f"{ug.files['indirect_effect']}: expected shape (trials, {info.n_layers}, {info.n_heads}) (layers and "
                      f"heads of {lm.name}), found {ie}. {_FIX}")
    if not 0 < ie[0] <= len(trials.trials):
        raise FVError(f"{ug.files['indirect_effect']}: expected at most {len(trials.trials)} trials (those of {trials.path}), "
                      f"found {ie[0]}. {_FIX}")


REFERENCE_META = "reference_meta.json"  # what `fv reference` writes beside src's files, with the identity
ARGS_FILES = ("indirect_effect_args.txt", "mean_head_activations_args.txt", "fv_eval_args.txt")  # what src writes


def recorded_identity(ug: UserGoldens) -> tuple[dict | None, str]:
    """The identity a user's golden folder records (``reference_meta.json``'s ``identity``, written by ``fv reference``),
    and where it was read; (None, "") where none is recorded (src's own files carry none)."""
    p = ug.folder / REFERENCE_META
    if p.is_file():
        ident = read_json(p, "reference meta").get("identity")
        if isinstance(ident, dict) and ident.get("weights_sha256"):
            return ident, str(p)
    return None, ""


def src_args(ug: UserGoldens) -> tuple[dict, Path | None]:
    """What src's ``*_args.txt`` beside the goldens records (JSON: model_name, n_shots, n_trials, prefixes, separators,
    revision, seed), or ({}, None)."""
    import json as _json

    for name in ARGS_FILES:
        p = ug.folder / name
        if p.is_file():
            try:
                raw = _json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(raw, dict):
                return raw, p
    return {}, None


def check_identity(ug: UserGoldens, lm: Any, trials: Any) -> tuple[dict, list[str]]:
    """Refuse a user's goldens of another model (or other shots, template, trials) in one line, before any stage.
    Returns the identity to record for them (theirs where recorded, else this model's, marked as asserted) and the
    notes. src's ``.pt`` files carry no identity: then only what its ``*_args.txt`` holds is checked (shots,
    template, revision) and the note says the identity was not recorded."""
    from fv.parity.identity import golden_identity, identity_problem, not_recorded_note, revision_of, template_digest

    subset = trials.subset(ug.n_trials)
    current = golden_identity(lm, trials, subset)
    where = f"the goldens in {ug.folder}"
    recorded, origin = recorded_identity(ug)
    if recorded is not None:
        problem = identity_problem(recorded, current, where, REGENERATE)
        if problem:
            raise FVError(problem)
        return ({**recorded, "recorded_by": f"recorded by `fv reference` ({origin})"},
                [f"goldens' identity checked ({origin}): weights digest {recorded['weights_sha256'][:12]}"])
    args, args_path = src_args(ug)
    facts = []
    if args_path is not None:
        if args.get("n_shots") is not None and int(args["n_shots"]) != current["n_shots"]:
            raise FVError(f"goldens of other trials: {args_path} says src made them with n_shots {args['n_shots']}, "
                          f"these trials ({trials.id}) have {current['n_shots']}. Give the trials src used, or regenerate "
                          f"with {REGENERATE}")
        if args.get("prefixes") is not None or args.get("separators") is not None:
            theirs = template_digest(args.get("prefixes"), args.get("separators"))
            if theirs != current["template_sha256"]:
                raise FVError(f"goldens of other trials: {args_path} says src made them with prefixes {args.get('prefixes')!r} "
                              f"and separators {args.get('separators')!r}, these trials ({trials.id}) use "
                              f"{trials.meta.get('prefixes')!r} and {trials.meta.get('separators')!r}. Regenerate with {REGENERATE}")
        ours = revision_of(lm.path)
        if args.get("revision") and ours and str(args["revision"]) != ours:
            raise FVError(f"goldens of another model: {args_path} says src made them with revision {args['revision']} of "
                          f"{args.get('model_name')}, this model ({lm.path}) is revision {ours}. Regenerate with {REGENERATE}")
        facts = [f"{k} {args[k]}" for k in ("model_name", "n_shots", "n_trials", "revision") if args.get(k) is not None]
    what = (f"(src's .pt files carry none; {args_path.name} says {', '.join(facts)})" if args_path is not None
            else "(src's .pt files carry none, and no *_args.txt lies beside them)")
    return ({**current, "recorded_by": f"asserted by `fv golden import` for {lm.name}: {NOT_RECORDED_BY_SRC}"},
            [not_recorded_note(where, what)])


NOT_RECORDED_BY_SRC = "src's files recorded no identity; this is the model they were imported for"


def check_identity_at_start(folder: str | Path, model_name: str, trials: Any) -> None:
    """The identity check of ``check_identity`` at a session's start, from the model's folder alone (its config and
    weight files: no model is loaded), so goldens of another model stop the session in one line."""
    from types import SimpleNamespace

    from fv.model.resolve import display_name, resolve_model_path
    from fv.model.tiny import tiny_name_of_folder

    path = resolve_model_path(model_name)
    ug = load_user_goldens(folder)
    if not 0 < ug.n_trials <= len(trials.trials):
        return  # check_fit says so, with the model loaded
    check_identity(ug, SimpleNamespace(path=path, name=tiny_name_of_folder(path.name) or display_name(path), model=None),
                   trials)


def golden_source(folder: str | Path, lm: Any, trials: Any) -> GoldenSource:
    """A user's golden folder as the other side of a parity run, checked against the model and trials."""
    ug = load_user_goldens(folder)
    check_fit(ug, lm, trials)
    _identity, notes = check_identity(ug, lm, trials)
    dt = str(ug.dtype).replace("torch.", "")
    return GoldenSource(ug.stage_values(), f"user goldens in {ug.folder} ({dt})", tolerance_for(ug.dtype, exact=False),
                        [f"golden source: {ug.folder} ({', '.join(p.name for p in ug.files.values())})", *notes], USER_GOLDENS,
                        ug.n_trials, dt)


def artifact_problems(run: Any, artifact: str) -> list[str] | None:
    """For one golden artifact of a run against user goldens: the differences from fv (empty when within the
    tolerance), or None when user goldens do not hold that artifact."""
    from fv.parity.golden import artifact_value

    if artifact not in USER_FILES:
        return None
    src, fv = artifact_value(run.src, artifact), artifact_value(run.fv, artifact)
    if isinstance(src, torch.Tensor):
        from fv.parity.golden import GOLDEN_ARTIFACTS

        tol = run.tolerance.for_stage(GOLDEN_ARTIFACTS[artifact][1])
        d = diff_tensors(src, fv, tol)
        return d.lines(tol) if d.failed else []
    return [] if src == fv else [f"{artifact}: golden {src!r:.200} fv {fv!r:.200}"]


def imported_from(folder: Path) -> str | None:
    """The user's golden folder a snapshot folder was imported from, or None (made by the reference)."""
    prov = Path(folder).parent / f"{Path(folder).name}.meta.json"
    if not prov.is_file():
        return None
    return read_json(prov, "golden provenance").get("imported_from")


def import_goldens(folder: str | Path, lm: Any, trials: Any, snapshot_root: Path, force: bool = False) -> Path:
    """Write a user's goldens as snapshots ``<root>/<model>/<trials id>/t<n>/`` with a provenance file beside
    them; returns the folder. Refuses to mix them into a folder that already holds goldens unless ``force``."""
    from fv.meta import run_meta

    ug = load_user_goldens(folder)
    check_fit(ug, lm, trials)
    identity, id_notes = check_identity(ug, lm, trials)
    dest = golden_dir(snapshot_root, lm.name, trials.id, ug.n_trials)
    held = sorted(p.name for p in dest.glob("*")) if dest.is_dir() else []
    if held and not force:
        raise FVError(f"{dest} already holds goldens ({', '.join(held)}); expected an empty folder. Pass --force to replace "
                      "them with the user's, or import for another model or trials.")
    values = {"mean_activations": ug.mean_activations, "dummy_labels": ug.dummy_labels, "indirect_effect": ug.indirect_effect}
    for name, value in values.items():
        kind = GOLDEN_ARTIFACTS[name][0]
        write_bytes(dest / f"{name}.{EXTENSIONS[kind]}", serialize(kind, value))
    for stale in (p for p in dest.glob("*") if p.stem not in values):  # a forced import leaves no mixed set
        stale.unlink()
    dt = str(ug.dtype).replace("torch.", "")
    write_json(dest.parent / f"{dest.name}.meta.json", {
        **run_meta(lm, trials), "source": USER_GOLDENS, "imported_from": str(ug.folder.resolve()), "dataset": ug.dataset,
        "golden_dtype": dt, "n_trials": ug.n_trials,
        "files": {name: {"file": p.name, "sha256": sha256_file(p)} for name, p in ug.files.items()},
        "identity": identity,
        "notes": [f"imported by `fv golden import` from {ug.folder.resolve()}: made by src on the user's machine ({dt}); "
                  "holds mean activations, dummy labels and indirect effects only", *id_notes],
    })
    return dest
