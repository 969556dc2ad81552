"""The reference's side of every parity stage, computed by its own functions through the adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from fv.errors import FVError
from fv.model.loading import LoadedModel
from fv.parity.sides import LiveSource
from fv.parity.stages import Params, StageValues, prompt_entry, score_pair, slot_entry
from fv.reference.adapter import InjectionNoOp, Reference
from fv.reference.universal import reference_universal_values
from fv.runtime.trials import FixedTrials, Trial

# the reference function behind each parity stage, named in reports when a stage fails
STAGE_FUNCTIONS = {
    "prompt": "utils/prompt_utils.py: word_pairs_to_prompt_data, create_prompt; utils/eval_utils.py: get_answer_id",
    "slot": "utils/prompt_utils.py: get_token_meta_labels, get_dummy_token_labels, compute_duplicated_labels, update_idx_map",
    "mean_activations": "utils/extract_utils.py: get_mean_head_activations (gather_attn_activations, multi-token averaging)",
    "indirect_effect": "compute_indirect_effect.py: compute_indirect_effect, activation_replacement_per_class_intervention",
    "top_heads": "utils/extract_utils.py: compute_function_vector (top-k of the trial-mean indirect effect)",
    "fv": "utils/extract_utils.py: compute_function_vector (sum of top heads' output projections)",
    "injection": "utils/intervention_utils.py: function_vector_intervention, add_function_vector",
}


def assemble(values: dict, tensors: dict, durations: dict, target_ids: dict | None = None) -> StageValues:
    """Stage values from the driver's raw answers (``fv.reference.worker.Driver.stage_values``), in the form fv's
    side produces them."""
    sv = StageValues()
    sv.durations.update({k: float(v) for k, v in durations.items()})
    sv.values["prompt"] = {k: prompt_entry(*v) for k, v in values["prompt"].items()}
    sv.values["slot"] = {"dummy_labels": values["slot"]["dummy_labels"],
                         "trials": {k: {side: slot_entry(*e) for side, e in entry.items()}
                                    for k, entry in values["slot"]["trials"].items()}}
    sv.values["mean_activations"] = tensors["mean_activations"]
    sv.values["indirect_effect"] = tensors["indirect_effect"]
    sv.values["top_heads"] = values["top_heads"]
    sv.values["fv"] = tensors["fv"]
    sv.values["injection"] = {k: {name: score_pair(tensors[f"inj/{k}/{name}/clean"], tensors[f"inj/{k}/{name}/edited"], tid)
                                  for name, tid in entry.items()} for k, entry in values["injection"].items()}
    return sv


def src_stage_values(ref: Reference, lm, trials: Sequence[Trial], params: Params, prefixes: dict,
                     separators: dict) -> StageValues:
    """Every stage computed by the reference's own functions: in this process on ``lm``'s model object, or in the
    reference's own process on the copy its loader loaded (``lm`` a ``RemoteModel``)."""
    from fv.reference.adapter import is_remote, trial_dicts

    td = trial_dicts(trials)
    if is_remote(lm):
        ans = lm.request("stages", trials=td, params=params.as_dict(), prefixes=prefixes, separators=separators)
        return assemble(ans["values"], lm.process.tensors(ans["file"]), ans["durations"])
    values, tensors, durations = ref.driver.stage_values(lm.model, lm.tokenizer, ref.model_config(lm), td, params.n_top_heads,
                                                         params.edit_layer, params.token_class_idx, prefixes, separators)
    return assemble(values, tensors, durations)


def src_refit_values(ref: Reference, lm, trials: Sequence[Trial], params: Params, mean_acts: torch.Tensor,
                     heads: Sequence[Sequence[int]]) -> dict:
    """The reference's FV and injection stages for fv's head list ``heads`` ([[layer, head, ...], ...]) on the
    reference's own mean activations ``mean_acts``: its ``compute_function_vector`` handed a score tensor whose
    top-k is exactly those heads, then its ``function_vector_intervention``. Returns ``{"fv", "injection"}`` in
    the form of ``assemble``'s values."""
    from fv.reference.adapter import is_remote, trial_dicts

    td = trial_dicts(trials)
    pairs = [[int(h[0]), int(h[1])] for h in heads]
    if is_remote(lm):
        from safetensors.torch import save_file

        f = lm.process.folder / f"refit-in-{id(mean_acts)}.safetensors"
        save_file({"mean_acts": mean_acts.detach().to("cpu").contiguous()}, str(f))
        try:
            ans = lm.request("refit", trials=td, params=params.as_dict(), heads=pairs, in_file=f.name)
        finally:
            f.unlink(missing_ok=True)
        values, tensors = ans["values"], lm.process.tensors(ans["file"])
    else:
        values, tensors = ref.driver.refit_values(lm.model, lm.tokenizer, ref.model_config(lm), td, mean_acts, pairs,
                                                  params.edit_layer, params.token_class_idx)
    return {"fv": tensors["fv"],
            "injection": {k: {name: score_pair(tensors[f"inj/{k}/{name}/clean"], tensors[f"inj/{k}/{name}/edited"], tid)
                              for name, tid in entry.items()} for k, entry in values["injection"].items()}}


def reference_stage_values(ref: Reference, lm: LoadedModel, trials: Sequence[Trial], params: Params, prefixes: dict,
                           separators: dict) -> tuple[StageValues, str | None]:
    """The reference's stage values, and why its injection cannot be trusted here (None when it can)."""
    error = None
    try:
        ref.require_live_injection(lm, params.edit_layer)
    except InjectionNoOp as exc:
        error = str(exc)
    return src_stage_values(ref, lm, trials, params, prefixes, separators), error


def reference_key_parts(src_root: Path, baukit: Path | None, compat: bool, lm: LoadedModel, memo_dir: Path | None) -> dict:
    """What the reference's values depend on besides trials and parameters: every file of its src/, the baukit
    it runs with, --src-compat, and the model object it computes on (for the src-values cache)."""
    from fv.parity.src_cache import model_key, tree_digest

    return {"src_tree_sha256": tree_digest(src_root), "baukit_sha256": tree_digest(baukit) if baukit else None,
            "compat": compat, "model": remote_model_key(lm, memo_dir) if _remote(lm) else model_key(lm, memo_dir),
            # its own process's interpreter and libraries (--src-python: another environment computes other values)
            "environment": lm.process.facts if _remote(lm) else None}


def _remote(lm) -> bool:
    from fv.reference.adapter import is_remote

    return is_remote(lm)


def remote_model_key(rm, memo_dir: Path | None) -> dict:
    """``model_key`` for the copy a reference process holds: its config, dtype, device and attention as its loader
    produced them (read there), the weight files of the folder fv resolved, and its quantized modules."""
    import json

    from fv.parity.src_cache import WEIGHT_SUFFIXES, device_kind, file_digest_memo

    cfg = dict(rm.describe["config"])
    cfg.pop("_name_or_path", None)
    folder = Path(rm.fv_path)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES) if folder.is_dir() else []
    weights = "files:" + "|".join(f"{p.name}:{file_digest_memo(p, memo_dir)}" for p in files) if files else f"spec:{rm.spec}"
    return {"config": json.loads(json.dumps(cfg, sort_keys=True, default=str)), "weights": weights, "dtype": f"torch.{rm.describe['dtype']}",
            "device": device_kind(str(rm.device)), "attn_implementation": rm.attn_implementation,
            "quantized": sorted({(v["class"], v["quant_type"], v["compute_dtype"]) for v in rm.quantized.values()})}


def _baukit_in_use() -> Path | None:
    """The folder (or lone nethook.py) of the baukit the adapter installed."""
    import sys

    mod = sys.modules.get("baukit.nethook") or sys.modules.get("baukit")
    f = getattr(mod, "__file__", None)
    if not f:
        return None
    pkg = sys.modules.get("baukit")
    return Path(f) if getattr(pkg, "__file__", None) is None else Path(pkg.__file__).parent


def require_same_loading(theirs: LoadedModel, mine: LoadedModel) -> None:
    """Both sides must hold the same weights in the same dtype and attention implementation, or the end-to-end
    gate compares two set-ups instead of two implementations."""
    a = (str(theirs.dtype).replace("torch.", ""), theirs.attn_implementation)
    b = (str(mine.dtype).replace("torch.", ""), mine.attn_implementation)
    if a != b:
        raise FVError(f"the two sides load {mine.name} differently: the reference's own loader gave {a[0]} with {a[1]} "
                      f"attention, fv {b[0]} with {b[1]} ({mine.loading_rule}). Drop --fv-dtype/--fv-attn-implementation "
                      "(fv then loads as the reference does), or pass --src-model shared to hand the reference fv's model.")


def live_source(ref: Reference, own: LoadedModel | None = None) -> LiveSource:
    """The reference as the parity engine's other side: on ``own``, the copy its own loader loaded (the
    end-to-end mode), or on fv's model object when ``own`` is None (the shared mode)."""

    def check(lm: LoadedModel, trials: FixedTrials) -> dict:
        theirs = own or lm
        if own is not None:
            require_same_loading(own, lm)
        _bos, rule = ref.require_trials_fit(theirs, trials)
        from fv.launch import environment_facts

        env = own.process.facts if own is not None else environment_facts()
        return {"src_model_mode": "own" if own is not None else "shared", "src_dtype": str(theirs.dtype).replace("torch.", ""),
                "src_python": env.get("executable"), "src_environment": env, "fv_environment": environment_facts(),
                "src_attn_implementation": theirs.attn_implementation,
                "src_loading": ("the reference's own loader (utils/model_utils.py), in a process of its own" if own is not None
                                else "fv's model object, in fv's process"),
                "src_bos_rule": rule}

    where = (f"its own loader's model: {str(own.dtype).replace('torch.', '')}, {own.attn_implementation} attention"
             if own is not None else "its functions on fv's model object")
    if own is not None and ref.python:
        env = own.process.facts
        where += f"; under {ref.python}: python {env.get('python')}, transformers {(env.get('versions') or {}).get('transformers')}"
    return LiveSource(
        compute=lambda lm, trials, params, prefixes, separators: reference_stage_values(ref, own or lm, trials, params, prefixes, separators),
        notes=list(ref.notes) + ([f"the reference loaded its own model with its own loader, in a process of its own "
                                  f"(pid {own.process.pid}, cwd {ref.src_root.parent}, PYTHONPATH={ref.src_root.parent})"]
                                 if own is not None else ["the reference ran in fv's process on fv's model object (shared mode)"]),
        compat=ref.compat, description=f"the live reference {ref.src_root} ({where})", check=check,
        refit=lambda lm, trials, params, mean, heads: src_refit_values(ref, own or lm, trials, params, mean, heads),
        universal=lambda lm, tasks, means, aie, n_top_heads: reference_universal_values(
            ref, own or lm, tasks, means, aie, n_top_heads, lm.info.d_model, lm.dtype),
        key_parts=lambda lm, memo: reference_key_parts(ref.src_root, _baukit_in_use(), ref.compat, own or lm, memo))
