"""fv's run folder written in ``sunsikham/my_fv_project``'s layout, so that their own loaders and plots read fv's
numbers: ``fv relation run --layout my_fv_project`` (each q) and ``fv runtime run --layout my_fv_project``.

Under ``<folder>/artifacts/`` (their q folder's ``artifacts``), from what fv computed in ``<folder>``:

- ``sampled_trials.json``: fv's trials in their schema (``{"meta", "trials": [{q_id, trial_idx, clean_prompt_str,
  corrupted_prompt_str, corrupted_full_str, target_str, target_first_token_id, target_token, demos_clean,
  demos_corrupted, query, query_source_index, demo_source_indices, demo_order}]}``);
- ``trial_metrics.jsonl``: one row per (trial, layer, head) with ``delta_p`` and ``delta_p_target`` (fv's indirect
  effect: the target's first-token probability on the corrupted prompt with the head's query-slot mean patched in,
  minus without);
- ``cie_scores.csv`` (per head: ``n_trials``, mean, population std and mean abs of ``delta_p``, ``any_nonzero``,
  ``q_id``) and ``aie_scores.csv`` (the same over the folder's qs, ``n_qid``; ranked by ``mean_delta_p``, as their
  ``load_stepd_scores_csv`` and ``select_topk`` read it);
- ``top_heads.json`` in their dict form (``{"meta": {k, score_key, model, ...}, "heads": [{layer, head, score_key,
  rank_score, mean_delta_p, n_trials}]}``), fv's heads in fv's order, ``rank_score`` the unrounded trial mean;
- ``fv_global_resid.pt`` (``{"fv_global_resid": (d_model,) float32}``) and ``stepD_mean_acts/qid_<Q>_clean_mean.pt``
  (``{"clean_mean": (layers, heads, head_dim)}``: the last slot of fv's mean activations, the query slot);
- ``step6/layer_<L>/eval_summary.json`` (the **zero-shot** figures, flat, their keys), ``eval_trials.jsonl`` (the
  zero-shot rows, their keys) and ``step6_results_<model>_L<L>.json`` (``{"config", "summary", "results"}``);
  ``step6/step6_all_layers_summary.json`` (their best layer: the largest zero-shot ``mean_delta_p``);
- ``qid_status.json``, and ``fv_layout.json`` naming what fv does not compute and so left out.

Left out (fv does not compute them; named in ``fv_layout.json``): the base and patched probabilities, logits and
log-probs of each head's patch (``p_base``, ``p_patch``, ``logit_*``, ``logprob_*`` of ``trial_metrics.jsonl`` and
the score CSVs; fv keeps their difference only), ``mean_delta_logprob`` of ``top_heads.json``, the per-q matrices of
their Step6 results. Every file is written whole or not at all (``fv.io``).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import torch

from fv.errors import FVError
from fv.io import atomic_write, ensure_dir, load_tensor_file, read_json, write_json, write_text

NAME = "my_fv_project"
SCORE_KEY = "mean_delta_p"
# their Step6 eval_summary.json keys, in their order (scripts/run_step6_fv_injection_eval.py, commit 9290bc50)
SUMMARY_KEYS = ("acc_base", "acc_with", "delta_acc", "mean_logit_base", "mean_logit_with", "mean_delta_logit",
                "std_delta_logit", "mean_logprob_base", "mean_logprob_with", "mean_delta_logprob", "std_delta_logprob",
                "mean_p_base", "mean_p_with", "mean_delta_p", "std_delta_p")
ROW_KEYS = ("prompt", "answer", "target_id", "target_token", "pred_id_base", "pred_id_with", "accuracy_base",
            "accuracy_with", "delta_acc", "logit_base", "logit_with", "delta_logit", "logprob_base", "logprob_with",
            "delta_logprob", "p_base", "p_with", "delta_p")
LEFT_OUT = {
    "trial_metrics.jsonl": ["p_base", "p_patch", "p_base_target", "p_patch_target", "logit_base", "logit_patch",
                            "delta_logit", "logprob_base", "logprob_patch", "delta_logprob", "slot_idx", "seq_token_idx"],
    "cie_scores.csv": ["mean_p_base", "std_p_base", "mean_p_patch", "std_p_patch", "mean_delta_logit", "mean_delta_logprob",
                       "mean_act_norm", "clean_mean_norm"],
    "aie_scores.csv": ["std_delta_p", "mean_p_base", "mean_p_patch", "mean_delta_logit", "mean_delta_logprob",
                       "mean_act_norm", "clean_mean_norm"],
    "top_heads.json": ["mean_delta_logprob"],
    "step6_results_*.json": ["per_qid", "matrix", "metadata"],
}
WHY = ("fv computes each head's indirect effect as one difference of probabilities (the reference's "
       "activation_replacement_per_class_intervention); the probabilities, logits and log-probs it is made of are not kept")


def _save_pt(path: Path, obj: Any) -> None:
    """``torch.save`` whole or not at all (``fv.io.atomic_write``)."""
    atomic_write(path, lambda fh: torch.save(obj, fh), binary=True)


def _csv(header: Sequence[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _f(x: float) -> str:
    return repr(float(x))


def _step6_files(folder: Path) -> dict[int, Path]:
    """fv's per-layer Step6 files of a run folder, either layout (``layer_<L>/step6_results.json`` or
    ``step6_results_L<L>.json``), by edit layer."""
    found = {}
    for f in list(folder.glob("layer_*/step6_results.json")) + list(folder.glob("step6_results_L*.json")):
        found[int(read_json(f)["edit_layer"])] = f
    return dict(sorted(found.items()))


def their_trials(trials: Any, tokenizer: Any, q_id: str, n_trials: int | None = None) -> dict:
    """The first ``n_trials`` (all when None) of fv's fixed trials (``fv.runtime.trials.FixedTrials``) as their
    ``sampled_trials.json``."""
    rows = []
    for t, raw in zip(trials.trials[:n_trials], trials.raw["trials"][:n_trials]):
        query = raw.get("query") or {"input": t.prompt_data_clean["query_target"]["input"],
                                     "output": t.prompt_data_clean["query_target"]["output"]}
        rows.append({"q_id": str(t.q_id or q_id), "trial_idx": int(t.trial_idx), "clean_prompt_str": t.clean_prompt_str,
                     "corrupted_prompt_str": t.corrupted_prompt_str,
                     "corrupted_full_str": t.corrupted_prompt_str + t.target_str, "target_str": t.target_str,
                     "target_first_token_id": int(t.first_token_id),
                     "target_token": tokenizer.convert_ids_to_tokens(int(t.first_token_id)),
                     "demos_clean": raw.get("demos_clean"), "demos_corrupted": raw.get("demos_corrupted"),
                     "query": query, "query_source_index": raw.get("query_source_index"),
                     "demo_source_indices": raw.get("demo_source_indices"), "demo_order": None})
    meta = trials.meta
    return {"meta": {"source": "fv", "written_by": "fv --layout my_fv_project", "fixed_trials_path": str(trials.path),
                     "fixed_trials_sha256": trials.sha256, "relation_csv_path": meta.get("relation_csv"),
                     "seed": meta.get("seed"), "n_trials": len(rows), "n_shots": meta.get("n_demos", meta.get("n_shots")),
                     "n_demos": meta.get("n_demos", meta.get("n_shots"))},
            "trials": rows}


def _head_rows(ie: torch.Tensor) -> dict[tuple[int, int], list[float]]:
    """Each head's indirect effects over the trials, as Python floats of the float32 values."""
    return {(layer, head): [float(x) for x in ie[:, layer, head].tolist()]
            for layer in range(ie.shape[1]) for head in range(ie.shape[2])}


def write_my_fv_project(folder: str | Path, trials: Any, tokenizer: Any, model: str, q_id: str | None = None,
                        status: str = "completed", n_trials: int | None = None) -> Path:
    """Write ``<folder>/artifacts/`` in their layout from the fv run in ``folder`` (``indirect_effect.pt``
    (trials, layers, heads), ``mean_activations.pt`` (layers, heads, slots, head_dim), ``top_heads.json``,
    ``fv_global_resid.pt`` (d_model,), the Step6 files) made on the first ``n_trials`` of ``trials`` (all when
    None). Returns the artifacts folder.

    Raises ``FVError`` naming the file when one of them is missing or does not fit the trials."""
    folder = Path(folder)
    used = trials.trials[:n_trials]
    q = str(q_id or used[0].q_id or trials.id)
    art = ensure_dir(folder / "artifacts")
    needed = ("indirect_effect.pt", "mean_activations.pt", "top_heads.json", "fv_global_resid.pt")
    missing = [n for n in needed if not (folder / n).is_file()]
    if missing:
        raise FVError(f"--layout {NAME}: {folder} lacks {', '.join(missing)}; run fv there first (it writes them)")
    ie = load_tensor_file(folder / "indirect_effect.pt").float()
    if ie.dim() != 3 or ie.shape[0] != len(used):
        raise FVError(f"--layout {NAME}: {folder / 'indirect_effect.pt'} has shape {tuple(ie.shape)}; expected "
                      f"({len(used)} trials, layers, heads) for {trials.path}")
    write_json(art / "sampled_trials.json", their_trials(trials, tokenizer, q, n_trials))
    # per (trial, layer, head)
    lines = []
    for i, t in enumerate(used):
        token = tokenizer.convert_ids_to_tokens(int(t.first_token_id))
        for layer in range(ie.shape[1]):
            for head in range(ie.shape[2]):
                d = float(ie[i, layer, head])
                lines.append(json.dumps({"q_id": q, "trial_idx": int(t.trial_idx), "layer": layer, "head": head,
                                         "target_id": int(t.first_token_id), "target_token": token, "delta_p": d,
                                         "delta_p_target": d}, ensure_ascii=False) + "\n")
    write_text(art / "trial_metrics.jsonl", "".join(lines))
    per_head = _head_rows(ie)
    means = {k: statistics.fmean(v) for k, v in per_head.items()}
    cie = [[layer, head, len(v), _f(means[(layer, head)]), _f(statistics.pstdev(v)), _f(statistics.fmean(abs(x) for x in v)),
            _f(means[(layer, head)]), any(x != 0 for x in v), q] for (layer, head), v in per_head.items()]
    write_text(art / "cie_scores.csv", _csv(("layer", "head", "n_trials", "mean_delta_p", "std_delta_p", "mean_abs_delta_p",
                                             "mean_delta_p_target", "any_nonzero", "q_id"), cie))
    ranked = sorted(per_head, key=lambda k: (-means[k], k[0], k[1]))  # their select_topk's order
    aie = [[layer, head, 1, _f(means[(layer, head)]), _f(statistics.fmean(abs(x) for x in per_head[(layer, head)])),
            _f(means[(layer, head)]), float(any(x != 0 for x in per_head[(layer, head)]))] for layer, head in ranked]
    write_text(art / "aie_scores.csv", _csv(("layer", "head", "n_qid", "mean_delta_p", "mean_abs_delta_p",
                                             "mean_delta_p_target", "any_nonzero"), aie))
    heads = read_json(folder / "top_heads.json")
    write_json(art / "top_heads.json", {
        "meta": {"k": len(heads), "score_key": SCORE_KEY, "model": model, "source": "fv",
                 "rank_score": "the unrounded trial mean of delta_p (fv's top_heads.json rounds it to 4 decimals, as the reference reports it)"},
        "heads": [{"layer": int(l), "head": int(h), "score_key": SCORE_KEY, "rank_score": means[(int(l), int(h))],
                   "mean_delta_p": means[(int(l), int(h))], "n_trials": ie.shape[0]} for l, h, _s in heads]})
    _save_pt(art / "fv_global_resid.pt", {"fv_global_resid": load_tensor_file(folder / "fv_global_resid.pt").float().reshape(-1),
                                          "source": "fv", "top_heads": [[int(l), int(h)] for l, h, _s in heads]})
    mean = load_tensor_file(folder / "mean_activations.pt").float()
    slot_q = int(mean.shape[2]) - 1  # the last slot: the query's last token, where the reference patches
    clean = {"clean_mean": mean[:, :, slot_q, :].contiguous(), "slot_q": slot_q, "n_heads": int(mean.shape[1]),
             "head_dim": int(mean.shape[3]), "resid_dim": int(mean.shape[1] * mean.shape[3])}
    _save_pt(art / "stepD_mean_acts" / f"qid_{q}_clean_mean.pt", clean)
    _save_pt(art / "stepD_mean_acts" / "global_clean_mean.pt", clean)
    layers = _write_step6(folder, art, q, model)
    write_json(art / "qid_status.json", {
        "q_id": q, "status": status, "written_by": "fv --layout my_fv_project", "updated_at": _now(),
        "config": {"model": model, "relation_csv_path": trials.meta.get("relation_csv"), "n_trials_per_q": ie.shape[0],
                   "n_demos": trials.meta.get("n_demos"), "topk": len(heads), "score_key": SCORE_KEY, "alpha": 1.0,
                   "seed": trials.meta.get("seed")},
        "expected_layers": layers, "reason": "all stages completed" if status == "completed" else status})
    write_json(art / "fv_layout.json", {"layout": NAME, "written_by": "fv", "from": str(folder),
                                        "left_out": LEFT_OUT, "why": WHY})
    return art


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _write_step6(folder: Path, art: Path, q: str, model: str) -> list[int]:
    """Their Step6 files per edit layer (zero-shot only) and the all-layers summary; returns the layers."""
    files = _step6_files(folder)
    per_layer, best, best_score = {}, None, None
    for layer, f in files.items():
        res = read_json(f)
        zs = res["summary"]["by_prompt_set"]["zero_shot"]
        summary = {k: zs[k] for k in SUMMARY_KEYS}
        rows = []
        for r in (r for r in res["trials"] if r["prompt_set"] == "zero_shot"):
            row = {"idx": len(rows), "q_id": q, **{k: r[k] for k in ROW_KEYS if k in r}}
            row["accuracy_base"], row["accuracy_with"] = float(r["accuracy_base"]), float(r["accuracy_with"])
            row["delta_acc"] = row["accuracy_with"] - row["accuracy_base"]
            rows.append(row)
        d = art / "step6" / f"layer_{layer}"
        write_json(d / "eval_summary.json", summary)
        write_text(d / "eval_trials.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        results = d / f"step6_results_{Path(model).name}_L{layer}.json"
        write_json(results, {"config": {"model": model, "edit_layer": layer, "n_eval": len(rows), "alpha": 1.0,
                                        "score_key": SCORE_KEY, "source": "fv"},
                             "summary": summary, "results": rows})
        score = float(summary[SCORE_KEY])
        if best_score is None or score > best_score:
            best, best_score = layer, score
        per_layer[str(layer)] = {"layer_dir": str(d), "results_path": str(results), "eval_summary_path": str(d / "eval_summary.json"),
                                 "score_key": SCORE_KEY, "score_value": score}
    write_json(art / "step6" / "step6_all_layers_summary.json", {
        "q_id": q, "score_key": SCORE_KEY, "expected_layers": list(files), "completed_layers": list(files),
        "missing_layers": [], "best_layer": best, "best_score": best_score, "per_layer": per_layer, "generated_at": _now()})
    return list(files)
