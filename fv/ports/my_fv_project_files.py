"""The files of ``sunsikham/my_fv_project``'s relation q-wise pipeline, read as one side of a comparison.

Their ``scripts/run_relation_qwise_pipeline.py`` runs, per q, ``run_stepD_aie_head_sweep.py`` (StepD),
``run_stepE_topk_fv_and_eval.py`` (StepE) and ``run_step6_fv_injection_eval.py`` (Step6, one run per edit layer)
and writes ``<out_root>/<relation>/<Q>/artifacts/``. What those scripts write (checked against their code at
commit 9290bc50d209a38bc5a5e444d92e35e99607b17d, and by running it on fv's tiny Llama):

- ``sampled_trials.json``: ``{"meta": {source, relation_csv_path, seed, n_trials, n_shots, n_demos, ...},
  "trials": [{q_id, trial_idx, clean_prompt_str, corrupted_prompt_str, corrupted_full_str, target_str,
  target_first_token_id, target_token, demos_clean, demos_corrupted, query, query_source_index (null),
  demo_source_indices (null), demo_order (null)}]}``; no prompt data, no ``answer_ids``.
- ``trial_metrics.jsonl``: one row per (trial, layer, head): ``q_id, trial_idx, layer, head, target_id,
  p_base, p_patch, delta_p, logit_*, logprob_*, slot_idx, seq_token_idx ...``. ``p_base`` is the softmax
  probability of the target's first token at the last token of the *corrupted* prompt (a forward with a
  recompute-only hook on that layer's ``o_proj``); ``p_patch`` the same with head ``head``'s ``o_proj`` input at
  the last token (``seq_token_idx``, checked to be the prompt's last token) replaced by the q's clean mean at the
  query slot. ``delta_p = p_patch - p_base`` (Python floats of float32 values) is the reference's indirect effect
  (``activation_replacement_per_class_intervention(..., last_token_only=True)``: probability after minus before).
- ``cie_scores.csv`` (per q, layer, head: trial means and stds of those columns), ``aie_scores.csv`` (the mean
  over qs of the CIE rows).
- ``stepD_mean_acts/qid_<Q>_clean_mean.pt`` and ``global_clean_mean.pt``: ``{"clean_mean": (layers, heads,
  head_dim) float32, "slot_q", "n_heads", "head_dim", "resid_dim"}``: the mean over the q's trials of each head's
  ``o_proj`` input on the *clean* prompts, at the query-predictive slot only (``slot_q``, the last slot). In
  relation mode ``mean_activations.pt`` is that same 3-D tensor (their fixed-trials StepD run writes a 4-D one).
- ``top_heads.json``: ``{"meta": {k, score_key, model, ...}, "heads": [{layer, head, score_key, rank_score,
  mean_delta_logprob, mean_delta_p, n_trials}]}``, the top ``k`` of ``aie_scores.csv`` by ``score_key``
  (default ``mean_delta_p``).
- ``fv_global_resid.pt``: ``{"fv_global_resid": (d_model,) float32, ...}``: the sum over the top heads of
  ``o_proj`` applied to a zero vector holding the clean mean of (layer, head) in head's block (``fv_by_layer.pt``:
  the same per layer).
- ``step6/layer_<L>/eval_summary.json``, ``eval_trials.jsonl``: the FV (alpha 1) added at layer L's output at the
  last token of *zero-shot* prompts ``Q: <query>\\nA:`` (``sampled_trials_zeroshot.json``, a shuffled sample of the
  trials' queries): per prompt ``target_id, logit_base/with, logprob_*, p_*, pred_id_base/with``.

This side returns ``indirect_effect`` (their ``delta_p``), ``top_heads`` (when ranked by ``mean_delta_p`` and
holding at least ``n_top_heads`` heads; ``rank_score`` rounded to 4 decimals as the reference reports it) and ``fv`` (when their FV was built from exactly those heads); the other
stages are left out and named in ``describe()["notes"]``. Their code is never imported: the files are read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fv.errors import FVError

KIND = "my_fv_project files"
NAME = "my_fv_project"  # the layout's name (fv.ports.layouts)
DESCRIPTION = "sunsikham/my_fv_project's relation q folder (<relation>/<Q>/artifacts: sampled_trials.json, trial_metrics.jsonl)"
REQUIRED = ("sampled_trials.json", "trial_metrics.jsonl")
IE_COLUMN = "delta_p"  # = p_patch - p_base: the reference's indirect effect


def _where(folder: Path) -> str:
    return f"{KIND} {folder}"


def _read_json(folder: Path, name: str) -> Any:
    path = folder / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FVError(f"{_where(folder)}: cannot read {name}: {exc}") from None


def _load_pt(folder: Path, name: str) -> Any:
    try:
        return torch.load(folder / name, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (any unreadable file is refused in one line)
        raise FVError(f"{_where(folder)}: cannot read {name}: {type(exc).__name__}: {exc}") from None


@dataclass
class UserFiles:
    """What one artifacts folder holds, read once."""

    folder: Path
    trials: list[dict]
    trials_meta: dict
    metrics: dict[tuple[str, int, int, int], dict]  # (q_id, trial_idx, layer, head) -> row
    clean_mean: torch.Tensor | None = None  # (layers, heads, head_dim) at slot_q
    slot_q: int | None = None
    top_heads: dict | None = None
    fv: torch.Tensor | None = None
    files: list[str] = field(default_factory=list)


def read_user_files(folder: str | Path) -> UserFiles:
    """Read their artifacts folder; a missing required file or a malformed row is refused in one line."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FVError(f"{_where(folder)}: no such folder (expected <out_root>/<relation>/<Q>/artifacts)")
    for name in REQUIRED:
        if not (folder / name).is_file():
            raise FVError(f"{_where(folder)}: missing {name} (written by their run_stepD_aie_head_sweep.py); "
                          "rerun their StepD for this q")
    st = _read_json(folder, "sampled_trials.json")
    if not isinstance(st, dict) or not isinstance(st.get("trials"), list) or not st["trials"]:
        raise FVError(f"{_where(folder)}: sampled_trials.json: expected {{'meta', 'trials': [...]}} with trials")
    metrics: dict[tuple[str, int, int, int], dict] = {}
    with (folder / "trial_metrics.jsonl").open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key = (str(row.get("q_id")), int(row["trial_idx"]), int(row["layer"]), int(row["head"]))
                if "p_base" in row or "p_patch" in row:
                    float(row["p_base"]), float(row["p_patch"])
                else:  # written by fv (--layout my_fv_project): the difference only
                    float(row[IE_COLUMN])
            except (ValueError, KeyError, TypeError) as exc:
                raise FVError(f"{_where(folder)}: trial_metrics.jsonl, line {n}: expected q_id, trial_idx, layer, "
                              f"head, and p_base with p_patch or {IE_COLUMN} ({type(exc).__name__}: {exc})") from None
            if key in metrics:
                raise FVError(f"{_where(folder)}: trial_metrics.jsonl, line {n}: (q_id, trial_idx, layer, head) "
                              f"{key} appears twice")
            metrics[key] = row
    files = list(REQUIRED)
    out = UserFiles(folder, st["trials"], st.get("meta") or {}, metrics, files=files)
    qs = sorted({str(t.get("q_id")) for t in out.trials})
    mean_name = f"stepD_mean_acts/qid_{qs[0]}_clean_mean.pt" if len(qs) == 1 else "stepD_mean_acts/global_clean_mean.pt"
    if (folder / mean_name).is_file():
        blob = _load_pt(folder, mean_name)
        cm = blob.get("clean_mean") if isinstance(blob, dict) else None
        if not isinstance(cm, torch.Tensor) or cm.dim() != 3:
            raise FVError(f"{_where(folder)}: {mean_name}: expected {{'clean_mean': (layers, heads, head_dim)}}")
        out.clean_mean, out.slot_q = cm.float(), blob.get("slot_q")
        files.append(mean_name)
    if (folder / "top_heads.json").is_file():
        th = _read_json(folder, "top_heads.json")
        if not isinstance(th, dict) or not isinstance(th.get("heads"), list):
            raise FVError(f"{_where(folder)}: top_heads.json: expected {{'meta': ..., 'heads': [...]}}")
        out.top_heads = th
        files.append("top_heads.json")
    if (folder / "fv_global_resid.pt").is_file():
        blob = _load_pt(folder, "fv_global_resid.pt")
        v = blob.get("fv_global_resid") if isinstance(blob, dict) else blob
        if not isinstance(v, torch.Tensor) or v.dim() != 1:
            raise FVError(f"{_where(folder)}: fv_global_resid.pt: expected {{'fv_global_resid': (d_model,)}}")
        out.fv = v.float()
        files.append("fv_global_resid.pt")
    return out


def looks_like(folder: str | Path) -> bool:
    """A relation q folder of theirs: ``sampled_trials.json`` and ``trial_metrics.jsonl`` side by side, not written
    by their fixed-trials mode (``meta.source`` ``fixed_trials_override``: ``fv.ports.my_fv_project_stepd``)."""
    folder = Path(folder)
    if not all((folder / name).is_file() for name in REQUIRED):
        return False
    try:
        meta = json.loads((folder / "sampled_trials.json").read_text(encoding="utf-8")).get("meta") or {}
    except (OSError, ValueError, AttributeError):
        return True  # theirs by its files; the reader names what is wrong with it
    return meta.get("source") != "fixed_trials_override"


def side(folder: str | Path) -> "UserFilesSide":
    return UserFilesSide(Path(folder))


def fixed_trials(folder: str | Path, tokenizer: Any, relation_csv: str | Path | None = None) -> dict:
    """The trials of their ``sampled_trials.json`` as an fv fixed-trials dict (:func:`their_trials_as_fixed`)."""
    return their_trials_as_fixed(folder, tokenizer, relation_csv)


# ---- their trials as an fv fixed-trials file -----------------------------------------------------------------
def _row_index(rows: list[tuple[str, str]], pair: dict, where: str) -> int:
    for i, (a, b) in enumerate(rows):
        if a == pair["input"].strip() and b == pair["output"].strip():
            return i
    raise FVError(f"{where}: ({pair['input']!r}, {pair['output']!r}) is not a row of its q in the relation CSV")


def their_trials_as_fixed(folder: str | Path, tokenizer: Any, relation_csv: str | Path | None = None) -> dict:
    """Their ``sampled_trials.json`` as an fv relation fixed-trials dict (``fv.runtime.trials`` schema), trials in
    their file's order. Prompt data are rebuilt with fv's prompt builder and must render to their stored prompt
    strings (else refused); ``answer_ids`` come from ``tokenizer`` and their ``target_first_token_id`` must be its
    first id; the source indices they leave null are looked up in the relation CSV (default: their meta's
    ``relation_csv_path``)."""
    from fv.runtime.datasets import load_relation_csv
    from fv.runtime.prompts import DEFAULT_PREFIXES, DEFAULT_SEPARATORS, answer_ids, make_prompt_data, prompt_string

    uf = read_user_files(folder)
    where = f"{_where(uf.folder)}: sampled_trials.json"
    csv_path = relation_csv or uf.trials_meta.get("relation_csv_path")
    if not csv_path:
        raise FVError(f"{where}: meta.relation_csv_path is not recorded; pass the relation CSV they ran (--relation-csv)")
    if not Path(csv_path).is_file():
        raise FVError(f"{where}: meta.relation_csv_path {csv_path} is not a file here (their path, maybe relative to "
                      "their project root); pass the relation CSV they ran (--relation-csv PATH)")
    groups = load_relation_csv(csv_path)
    out = []
    for i, t in enumerate(sorted(uf.trials, key=lambda r: (str(r["q_id"]), int(r["trial_idx"])))):
        at = f"{where}: trials[q_id={t['q_id']}, trial_idx={t['trial_idx']}]"
        rows = groups.get(str(t["q_id"]))
        if rows is None:
            raise FVError(f"{at}: q {t['q_id']!r} is not in relation CSV {csv_path}")
        demos = [(d["input"], d["output"]) for d in t["demos_clean"]]
        corr = [(d["input"], d["output"]) for d in t["demos_corrupted"]]
        query = (t["query"]["input"], t["query"]["output"])
        clean = make_prompt_data(demos, query, DEFAULT_PREFIXES, DEFAULT_SEPARATORS)
        cor = make_prompt_data(corr, query, DEFAULT_PREFIXES, DEFAULT_SEPARATORS)
        for side, pd in (("clean_prompt_str", clean), ("corrupted_prompt_str", cor)):
            if prompt_string(pd) != t[side]:
                raise FVError(f"{at}.{side}: fv's prompt builder renders {prompt_string(pd)!r}, their file holds "
                              f"{t[side]!r}")
        target = clean["query_target"]["output"]
        if target != t["target_str"]:
            raise FVError(f"{at}.target_str: expected {target!r}, found {t['target_str']!r}")
        ids = answer_ids(tokenizer, t["clean_prompt_str"], target)
        if int(t["target_first_token_id"]) != ids[0]:
            raise FVError(f"{at}.target_first_token_id: their {t['target_first_token_id']}, this tokenizer's first "
                          f"answer id {ids[0]}: not the tokenizer they ran with")
        demo_idx = [_row_index(rows, d, at) for d in t["demos_clean"]]
        out.append({"q_id": str(t["q_id"]), "query_source_index": _row_index(rows, t["query"], at),
                    "demo_source_indices": demo_idx,
                    "demos_clean": [dict(input=a, output=b) for a, b in demos],
                    "demos_corrupted": [dict(input=a, output=b) for a, b in corr],
                    "query": {"input": query[0], "output": query[1]},
                    "clean_prompt_str": t["clean_prompt_str"], "corrupted_prompt_str": t["corrupted_prompt_str"],
                    "prompt_data_clean": clean, "prompt_data_corrupted": cor, "target_str": target,
                    "target_first_token_id": ids[0], "answer_ids": ids})
    meta = {"relation_csv": str(csv_path), "seed": int(uf.trials_meta.get("seed", 0)),
            "n_demos": len(out[0]["demos_clean"]), "q_ids": sorted({t["q_id"] for t in out}),
            "prefixes": dict(DEFAULT_PREFIXES), "separators": dict(DEFAULT_SEPARATORS),
            "prepend_bos_token_used": False}
    return {"meta": meta, "trials": out}


# ---- the side -------------------------------------------------------------------------------------------------
@dataclass
class UserFilesSide:
    """``sunsikham/my_fv_project``'s artifacts folder for one q (``<relation>/<Q>/artifacts``) as a side of a
    comparison (protocol of ``fv.parity.sides``; not live: values made earlier)."""

    folder: Path

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self._files: UserFiles | None = None

    @property
    def files(self) -> UserFiles:
        if self._files is None:
            self._files = read_user_files(self.folder)
        return self._files

    # which of their trials each of the given trials is, and fv's key for it
    def trial_map(self, trials: dict, params: dict) -> list[tuple[str, tuple[str, int]]]:
        """For each trial fv compares (``max_trials`` of the file's), fv's key ``"<trial_id>:<trial_idx>"`` and
        their (q_id, trial_idx), matched by q, clean and corrupted prompt strings. A trial they do not hold is
        refused in one line."""
        uf = self.files
        theirs = {(str(t["q_id"]), t["clean_prompt_str"], t["corrupted_prompt_str"]): (str(t["q_id"]), int(t["trial_idx"]))
                  for t in uf.trials}
        qs = {q for q, _c, _k in theirs}
        given = trials["file"]["trials"]
        n = params.get("max_trials")
        given = given[:n] if n else given
        out = []
        for idx, t in enumerate(given):
            key = f"{t.get('trial_id', idx)}:{idx}"
            # trials without a q (an ICL dataset's) match the folder's one q (fv's layout names it by the trials id)
            q = str(t["q_id"]) if t.get("q_id") is not None else (next(iter(qs)) if len(qs) == 1 else None)
            found = theirs.get((q, t["clean_prompt_str"], t["corrupted_prompt_str"]))
            if found is None:
                raise FVError(f"{_where(uf.folder)}: sampled_trials.json holds no trial with the prompts of trial {key} "
                              f"of {trials.get('path')}; compare with the trials they ran (their_trials_as_fixed)")
            out.append((key, found))
        return out

    def _dims(self) -> tuple[int, int]:
        uf = self.files
        if uf.clean_mean is not None:
            return int(uf.clean_mean.shape[0]), int(uf.clean_mean.shape[1])
        return 1 + max(k[2] for k in uf.metrics), 1 + max(k[3] for k in uf.metrics)

    def _plan(self, trials: dict, params: dict) -> tuple[dict, list[str]]:
        """The stages held (values) and the notes naming those left out."""
        uf, notes, values = self.files, [], {}
        mapping = self.trial_map(trials, params)
        n_layers, n_heads = self._dims()
        missing = [(q, ti, layer, head) for _k, (q, ti) in mapping for layer in range(n_layers) for head in range(n_heads)
                   if (q, ti, layer, head) not in uf.metrics]
        all_trials = len(mapping) == len({(str(t["q_id"]), int(t["trial_idx"])) for t in uf.trials})
        if not all_trials:
            notes.append(f"not compared: indirect_effect: their effects patch in the clean mean over all {len(uf.trials)} "
                         f"of their trials; {len(mapping)} are compared here (compare every trial: max_trials None)")
        elif missing:
            notes.append(f"not compared: indirect_effect: trial_metrics.jsonl lacks {len(missing)} (trial, layer, head) "
                         f"cells of the {n_layers}x{n_heads} model, first {missing[0]} (their sweep ran on some layers/heads only)")
        else:
            ie = torch.zeros(len(mapping), n_layers, n_heads, dtype=torch.float32)
            for i, (_k, (q, ti)) in enumerate(mapping):
                for layer in range(n_layers):
                    for head in range(n_heads):
                        r = uf.metrics[(q, ti, layer, head)]
                        if "p_patch" in r:
                            p = torch.tensor([float(r["p_patch"]), float(r["p_base"])], dtype=torch.float32)
                            ie[i, layer, head] = p[0] - p[1]  # delta_p in float32, as the reference subtracts
                        else:  # fv's layout keeps the float32 difference itself
                            ie[i, layer, head] = float(r[IE_COLUMN])
            values["indirect_effect"] = ie
        k = int(params.get("n_top_heads", 10))
        th = uf.top_heads
        score_key = ((th or {}).get("meta") or {}).get("score_key")
        n_q = len({str(t["q_id"]) for t in uf.trials})
        if th is None:
            notes.append("not compared: top_heads, fv: no top_heads.json (their StepE did not run)")
        elif score_key != "mean_delta_p":
            notes.append(f"not compared: top_heads, fv: their heads are ranked by {score_key!r}, the reference's by the "
                         "trial-mean indirect effect (mean_delta_p)")
        elif missing or n_q != 1 or not all_trials:
            notes.append("not compared: top_heads, fv: their ranking is over all their trials of one q and every head; "
                         "the trials compared here are not all of them, or the sweep is partial, or the folder mixes qs")
        elif len(th["heads"]) < k:
            notes.append(f"not compared: top_heads, fv: their top_heads.json holds {len(th['heads'])} heads (k), "
                         f"n_top_heads is {k}")
        else:
            # the reference reports each head's trial-mean indirect effect rounded to 4 decimals; theirs is unrounded
            values["top_heads"] = [[int(h["layer"]), int(h["head"]), round(float(h["rank_score"]), 4)]
                                   for h in th["heads"][:k]]
            if uf.fv is None:
                notes.append("not compared: fv: no fv_global_resid.pt")
            elif len(th["heads"]) != k:
                notes.append(f"not compared: fv: their fv_global_resid.pt sums their top {len(th['heads'])} heads, "
                             f"n_top_heads is {k}")
            else:
                values["fv"] = uf.fv
        notes.append("not compared: mean_activations: their files keep only the query slot's mean (stepD_mean_acts/"
                     "*_clean_mean.pt, (layers, heads, head_dim)), not every slot; UserFilesSide.query_slot_mean() "
                     "gives it, to compare with the stage's last slot")
        notes.append("not compared: prompt, slot: their files hold the prompt strings only (no token ids, no slot map); "
                     "every compared trial is matched to theirs by its clean and corrupted prompt strings")
        notes.append("not compared: injection: their Step6 scores zero-shot prompts only (no shuffled prompt set), keeps "
                     "log-probs and probabilities computed in float32 and no top-token scores; "
                     "UserFilesSide.zero_shot_injection() gives its logits and argmax per trial, to check against the "
                     "stage's zero_shot entries")
        return values, notes

    def describe(self, trials: dict, params: dict) -> dict:
        uf = self.files
        _values, notes = self._plan(trials, params)
        meta = (uf.top_heads or {}).get("meta") or {}
        dtype = meta.get("dtype") or uf.trials_meta.get("dtype")
        return {"kind": KIND, "description": f"{KIND} in {uf.folder} ({', '.join(uf.files)})", "live": False,
                "dtype": str(dtype) if dtype else None,
                "notes": [f"their files: {uf.folder} ({', '.join(uf.files)})",
                          f"indirect_effect = their trial_metrics.jsonl {IE_COLUMN} (p_patch - p_base, float32)"] + notes,
                "compat": False, "facts": {"port": KIND, "port_folder": str(uf.folder)}}

    def stage_values(self, trials: dict, params: dict) -> dict:
        values, _notes = self._plan(trials, params)
        return {"values": values, "durations": {}, "injection_error": None, "origin": "their files"}

    def zero_shot_injection(self, trials: dict, params: dict) -> dict:
        """Their Step6 at ``params["edit_layer"]`` per compared trial, keyed as fv keys it: ``{key: {"target_id",
        "base": {"logit", "pred_id"}, "with": {"logit", "pred_id"}}}``, matched by zero-shot prompt
        (``Q: <query>\\nA:``), for a check against the injection stage's ``zero_shot`` entries. Only the raw logit and
        the argmax: their log-probs and probabilities are computed in float32, fv's in float64. Not a stage: theirs
        has no ``shuffled`` prompt set and no scores of the top tokens. Trials their Step6 did not sample are left out."""
        layer = int(params["edit_layer"])
        name = f"step6/layer_{layer}/eval_trials.jsonl"
        path = self.folder / name
        if not path.is_file():
            raise FVError(f"{_where(self.folder)}: missing {name} (their Step6 did not run at edit layer {layer})")
        rows = {}
        for ln in path.read_text(encoding="utf-8").splitlines():
            if ln.strip():
                r = json.loads(ln)
                rows[(str(r.get("q_id")), r["prompt"])] = r
        by_trial = {(str(t["q_id"]), int(t["trial_idx"])): t for t in self.files.trials}
        out = {}
        for key, qt in self.trial_map(trials, params):
            t = by_trial[qt]
            r = rows.get((qt[0], f"Q: {t['query']['input']}\nA:"))
            if r is None:
                continue
            out[key] = {"target_id": int(r["target_id"]),
                        "base": {"logit": float(r["logit_base"]), "pred_id": int(r["pred_id_base"])},
                        "with": {"logit": float(r["logit_with"]), "pred_id": int(r["pred_id_with"])}}
        return out

    def query_slot_mean(self) -> torch.Tensor | None:
        """Their clean mean at the query slot, (layers, heads, head_dim) float32 (None when not written)."""
        return self.files.clean_mean
