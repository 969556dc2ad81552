"""The folder of ``sunsikham/my_fv_project``'s StepD run on fixed trials (and StepE's files beside it), read as one
side of a comparison.

Their ``scripts/run_stepD_aie_head_sweep.py --fixed_trials_path FILE --fixed_out_dir DIR`` writes ``DIR/artifacts/``
and ``DIR/logs/stepD_aie.log``; ``scripts/run_stepE_topk_fv_and_eval.py --stepd_artifacts_dir DIR/artifacts --out_dir
OUT`` writes its files to ``OUT``. What they write (checked against their code at commit
9290bc50d209a38bc5a5e444d92e35e99607b17d, and by running it on fv's tiny Llama, fixtures/ports/my_fv_project/stepd_fixed):

- ``sampled_trials.json``: ``{"meta": {"source": "fixed_trials_override", "fixed_trials_path" (the file as given),
  "relation_csv_path": null, "seed", "n_trials", "n_shots", "n_demos", ...}, "trials": [{q_id (null for ICL trials),
  trial_idx, clean_prompt_str, corrupted_prompt_str, corrupted_full_str, target_str, target_first_token_id,
  target_token, demos_clean, demos_corrupted, query, ...}]}``: the first ``n_trials`` trials of the file, in its
  order (``trial_idx`` = index in the file). Neither the file's sha256 nor a copy of it is kept.
- ``trial_metrics.jsonl``: one row per (trial, layer, head) swept: ``trial_idx, layer, head, target_id, p_base,
  p_patch, delta_p, logit_*, logprob_*, slot_idx, seq_token_idx ...`` (no ``q_id`` in this mode). ``p_base``: the
  softmax probability of the target's first token at the last token of the *corrupted* prompt; ``p_patch``: the same
  with head ``head``'s ``o_proj`` input there replaced by the clean mean at the query slot. ``delta_p = p_patch -
  p_base`` is the reference's indirect effect.
- ``mean_activations.pt``: a bare tensor ``(layers, heads, slots, head_dim)`` float32, the mean over the first
  ``n_mean_trials`` trials of each head's ``o_proj`` input on the *clean* prompts, per slot of the reference's dummy
  labels. Only the swept layers are filled (the others stay zero). It is a running mean (``mean + (x - mean) /
  (count + 1)``), and a word of several tokens puts its *first* token's activation in its slot (their
  ``apply_paper_idx_map_to_slots`` reads ``idx_map`` and leaves ``idx_avg`` unused), where the reference averages
  the word's tokens.
- ``mean_activations_meta.json``: ``{n_mean_trials, n_icl_examples, seed, layers (swept), n_layers, n_heads,
  head_dim, resid_dim, dummy_labels (the slot labels, without positions), slot_index_map, slot_query_pred}``.
- ``aie_scores.csv`` (per head: ``n_trials``, ``mean_delta_p``, std, mean abs, and the same of ``p_*``, ``logit_*``,
  ``logprob_*``; ranked by ``--score_key``, default ``mean_delta_p``) and ``aie_scores.json`` (the same rows, a meta);
  ``run_meta.json``, ``stepD_success_filter.json``, ``perf_stats.json``, ``_resume/``.
- From StepE: ``top_heads.json`` (``{"meta": {k, score_key, stepd_artifacts_dir, ...}, "heads": [{layer, head,
  score_key, rank_score, mean_delta_logprob, mean_delta_p, n_trials}]}``, the top ``k`` of ``aie_scores.csv`` by
  ``(-score, layer, head)``), written first. Then StepE looks for a 3-D mean (``stepD_mean_acts/global_clean_mean.pt``,
  ``mean_activations.pt``, ``clean_mean.pt``) and, finding this 4-D ``mean_activations.pt``, stops with "Unsupported
  mean activations shape; expected [layers, heads, head_dim]" (exit 1): on a fixed-trials folder as StepD leaves it,
  StepE writes no FV. Given a 3-D mean of the query slot (``clean_mean.pt``, as their relation mode writes it), it
  goes on: ``fv_global_resid.pt`` (``{"fv_global_resid": (d_model,) float32, ...}``: the sum over the top heads of
  ``o_proj`` applied to the head's clean mean alone in its block), ``fv_global_resid_meta.json`` (its ``heads``),
  ``fv_by_layer.pt`` and ``stepE_eval.json``.

This side returns ``mean_activations`` (their 4-D tensor, when every layer was swept, the mean is over all the trials
compared, and their slots are the trials' dummy-label layout with the query slot last), ``indirect_effect`` (``p_patch
- p_base`` in float32), ``top_heads`` (when ranked by ``mean_delta_p`` over every head of this folder's
``aie_scores.csv``; ``rank_score`` rounded to 4 decimals as the reference reports it) and ``fv`` (when a
``fv_global_resid.pt`` of exactly ``n_top_heads`` heads lies beside them); the other stages are left out and named in
``describe()["notes"]``. Their code is never imported: the files are read.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fv.errors import FVError

NAME = "my_fv_project-stepd"
DESCRIPTION = ("sunsikham/my_fv_project's StepD run on fixed trials (<fixed_out_dir>/artifacts: sampled_trials.json "
               "of source fixed_trials_override, trial_metrics.jsonl, a 4-D mean_activations.pt), with StepE's files")
KIND = "my_fv_project StepD files"
SOURCE = "fixed_trials_override"  # sampled_trials.json's meta.source in their fixed-trials mode
REQUIRED = ("sampled_trials.json", "trial_metrics.jsonl", "mean_activations.pt", "mean_activations_meta.json")
SCORE_KEY = "mean_delta_p"
QUERY_LABEL = "query_predictive_token"
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _where(folder: Path) -> str:
    return f"{KIND} {folder}"


def _read_json(folder: Path, name: str) -> Any:
    try:
        return json.loads((folder / name).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise FVError(f"{_where(folder)}: cannot read {name}: {exc}") from None


def _load_pt(folder: Path, name: str) -> Any:
    try:
        return torch.load(folder / name, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (any unreadable file is refused in one line)
        raise FVError(f"{_where(folder)}: cannot read {name}: {type(exc).__name__}: {exc}") from None


def looks_like(folder: str | Path) -> bool:
    """Their fixed-trials StepD folder: the four files StepD always writes there, ``sampled_trials.json`` of source
    ``fixed_trials_override``, and ``mean_activations_meta.json`` holding their slot labels (a relation q folder has
    neither that source nor that meta; fv's own run folder has no ``sampled_trials.json``)."""
    folder = Path(folder)
    if not all((folder / name).is_file() for name in REQUIRED):
        return False
    try:
        st = json.loads((folder / "sampled_trials.json").read_text(encoding="utf-8-sig"))
        mm = json.loads((folder / "mean_activations_meta.json").read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return False
    return (isinstance(st, dict) and isinstance(st.get("meta"), dict) and st["meta"].get("source") == SOURCE
            and isinstance(mm, dict) and "dummy_labels" in mm and "slot_query_pred" in mm)


def side(folder: str | Path) -> "StepDFilesSide":
    return StepDFilesSide(Path(folder))


@dataclass
class StepDFiles:
    """What one fixed-trials StepD folder holds, read once."""

    folder: Path
    trials: list[dict]
    trials_meta: dict
    metrics: dict[tuple[int, int, int], dict]  # (trial_idx, layer, head) -> row
    mean: torch.Tensor  # (layers, heads, slots, head_dim)
    mean_meta: dict
    scores: list[dict] | None = None  # aie_scores.csv rows
    top_heads: dict | None = None
    fv: torch.Tensor | None = None
    fv_meta: dict | None = None
    dtype: str | None = None  # from ../logs/stepD_aie.log, when there
    files: list[str] = field(default_factory=list)


def read_stepd_files(folder: str | Path) -> StepDFiles:
    """Read their fixed-trials StepD folder; a missing required file or a malformed one is refused in one line."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FVError(f"{_where(folder)}: no such folder (expected <fixed_out_dir>/artifacts of their StepD run)")
    for name in REQUIRED:
        if not (folder / name).is_file():
            raise FVError(f"{_where(folder)}: missing {name} (written by their run_stepD_aie_head_sweep.py "
                          "--fixed_trials_path); rerun their StepD")
    st = _read_json(folder, "sampled_trials.json")
    if not isinstance(st, dict) or not isinstance(st.get("trials"), list) or not st["trials"]:
        raise FVError(f"{_where(folder)}: sampled_trials.json: expected {{'meta', 'trials': [...]}} with trials")
    meta = st.get("meta") or {}
    if meta.get("source") != SOURCE:
        raise FVError(f"{_where(folder)}: sampled_trials.json: meta.source is {meta.get('source')!r}, not {SOURCE!r}: "
                      "not a StepD run on fixed trials (a relation q folder is read by the my_fv_project layout)")
    metrics: dict[tuple[int, int, int], dict] = {}
    with (folder / "trial_metrics.jsonl").open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key = (int(row["trial_idx"]), int(row["layer"]), int(row["head"]))
                float(row["p_base"]), float(row["p_patch"])
            except (ValueError, KeyError, TypeError) as exc:
                raise FVError(f"{_where(folder)}: trial_metrics.jsonl, line {n}: expected trial_idx, layer, head, p_base "
                              f"and p_patch ({type(exc).__name__}: {exc})") from None
            if key in metrics:
                raise FVError(f"{_where(folder)}: trial_metrics.jsonl, line {n}: (trial_idx, layer, head) {key} appears twice")
            metrics[key] = row
    mean = _load_pt(folder, "mean_activations.pt")
    if not isinstance(mean, torch.Tensor) or mean.dim() != 4:
        shape = tuple(mean.shape) if isinstance(mean, torch.Tensor) else type(mean).__name__
        raise FVError(f"{_where(folder)}: mean_activations.pt: expected a (layers, heads, slots, head_dim) tensor, found "
                      f"{shape} (a 3-D one is a relation run's query-slot mean)")
    mm = _read_json(folder, "mean_activations_meta.json")
    labels = mm.get("dummy_labels") if isinstance(mm, dict) else None
    if not isinstance(labels, list) or len(labels) != mean.shape[2]:
        raise FVError(f"{_where(folder)}: mean_activations_meta.json: expected dummy_labels, one per slot of "
                      f"mean_activations.pt ({mean.shape[2]}), found {len(labels) if isinstance(labels, list) else labels!r}")
    out = StepDFiles(folder, st["trials"], meta, metrics, mean.float(), mm, files=list(REQUIRED))
    if (folder / "aie_scores.csv").is_file():
        with (folder / "aie_scores.csv").open(encoding="utf-8", newline="") as fh:
            out.scores = list(csv.DictReader(fh))
        out.files.append("aie_scores.csv")
    if (folder / "top_heads.json").is_file():
        th = _read_json(folder, "top_heads.json")
        if not isinstance(th, dict) or not isinstance(th.get("heads"), list):
            raise FVError(f"{_where(folder)}: top_heads.json: expected {{'meta': ..., 'heads': [...]}}")
        out.top_heads = th
        out.files.append("top_heads.json")
    if (folder / "fv_global_resid.pt").is_file():
        blob = _load_pt(folder, "fv_global_resid.pt")
        v = blob.get("fv_global_resid") if isinstance(blob, dict) else blob
        if not isinstance(v, torch.Tensor) or v.dim() != 1:
            raise FVError(f"{_where(folder)}: fv_global_resid.pt: expected {{'fv_global_resid': (d_model,)}}")
        out.fv = v.float()
        out.files.append("fv_global_resid.pt")
        if (folder / "fv_global_resid_meta.json").is_file():
            out.fv_meta = _read_json(folder, "fv_global_resid_meta.json")
    log = folder.parent / "logs" / "stepD_aie.log"
    if log.is_file():
        m = re.search(r"resolved_dtype=(\w+)", log.read_text(encoding="utf-8", errors="replace"))
        out.dtype = DTYPES.get(m.group(1), m.group(1)) if m else None
    return out


# ---- the trials they ran, as an fv fixed-trials file ---------------------------------------------------------
def _trials_file(uf: StepDFiles) -> Path | None:
    """The fixed-trials file their StepD read: the path it recorded, else a file of that name in the folder or in
    ``<fixed_out_dir>`` (the folder's parent)."""
    recorded = uf.trials_meta.get("fixed_trials_path")
    if not recorded:
        return None
    p = Path(str(recorded))
    candidates = [p] if p.is_absolute() else [uf.folder / p, uf.folder.parent / p]
    candidates += [uf.folder / p.name, uf.folder.parent / p.name]
    return next((c for c in candidates if c.is_file()), None)


def fixed_trials(folder: str | Path, tokenizer: Any, relation_csv: str | Path | None = None) -> dict:
    """The fv fixed-trials dict (``fv.runtime.trials`` schema) of the trials their StepD ran: the first ``n_trials``
    of the file it recorded (``sampled_trials.json``'s ``meta.fixed_trials_path``, or a file of that name in the
    folder or its parent), each checked against their snapshot (prompt strings, target, target id) and its target id
    against ``tokenizer``. ``relation_csv`` is not used: a fixed-trials run records its trials file, not a CSV."""
    from fv.runtime.prompts import answer_ids
    from fv.runtime.trials import validate_trials

    del relation_csv
    uf = read_stepd_files(folder)
    where = f"{_where(uf.folder)}: sampled_trials.json"
    recorded = uf.trials_meta.get("fixed_trials_path")
    path = _trials_file(uf)
    if path is None:
        name = Path(str(recorded)).name if recorded else "<the trials file>"
        raise FVError(f"{where}: the fixed-trials file their StepD read ({recorded}) is not here, nor {name} in "
                      f"{uf.folder} or {uf.folder.parent}; copy the file they ran into {uf.folder.parent}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise FVError(f"{where}: cannot read the fixed-trials file {path}: {exc}") from None
    rows = sorted(uf.trials, key=lambda r: int(r["trial_idx"]))
    given = raw.get("trials") if isinstance(raw, dict) else None
    if not isinstance(given, list) or len(given) < len(rows):
        raise FVError(f"{where}: {path} holds {len(given) if isinstance(given, list) else 'no'} trials; their StepD "
                      f"ran its first {len(rows)}: not the file they read")
    for r in rows:
        i = int(r["trial_idx"])
        t = given[i]
        for k in ("clean_prompt_str", "corrupted_prompt_str", "target_str"):
            if t.get(k) != r.get(k):
                raise FVError(f"{where}: trials[trial_idx={i}].{k} is {r.get(k)!r}, {path} trials[{i}] holds "
                              f"{t.get(k)!r}: not the file they read")
        ids = answer_ids(tokenizer, t["clean_prompt_str"], t["target_str"])
        if int(r["target_first_token_id"]) != ids[0]:
            raise FVError(f"{where}: trials[trial_idx={i}].target_first_token_id: their {r['target_first_token_id']}, "
                          f"this tokenizer's first answer id {ids[0]}: not the tokenizer they ran with")
    out = {**raw, "trials": given[:len(rows)]}
    meta = dict(raw.get("meta") or {})
    if "n_trials" in meta:
        meta["n_trials"] = len(rows)
    out["meta"] = meta
    validate_trials(out, f"{path} (the trials of {uf.folder})")
    return out


# ---- the side -------------------------------------------------------------------------------------------------
@dataclass
class StepDFilesSide:
    """``sunsikham/my_fv_project``'s fixed-trials StepD folder (``<fixed_out_dir>/artifacts``) as a side of a
    comparison (protocol of ``fv.parity.sides``; not live: values made earlier)."""

    folder: Path

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self._files: StepDFiles | None = None

    @property
    def files(self) -> StepDFiles:
        if self._files is None:
            self._files = read_stepd_files(self.folder)
        return self._files

    def slot_labels(self) -> list[str]:
        """Their slot labels (``mean_activations_meta.json``'s ``dummy_labels``), one per slot of the mean."""
        return [str(x) for x in self.files.mean_meta["dummy_labels"]]

    def trial_map(self, trials: dict, params: dict) -> list[tuple[str, int]]:
        """For each trial fv compares, fv's key ``"<trial_id>:<trial_idx>"`` and their ``trial_idx``, matched by the
        clean and corrupted prompt strings (and q, when theirs has one). Their values average every trial they ran,
        so the trials compared must be all of them: a trial they do not hold, or a subset, is refused in one line."""
        uf = self.files
        theirs = {(t.get("q_id"), t["clean_prompt_str"], t["corrupted_prompt_str"]): int(t["trial_idx"]) for t in uf.trials}
        given = trials["file"]["trials"]
        n = params.get("max_trials")
        given = given[:n] if n else given
        out = []
        for idx, t in enumerate(given):
            key = f"{t.get('trial_id', idx)}:{idx}"
            found = theirs.get((t.get("q_id"), t["clean_prompt_str"], t["corrupted_prompt_str"]))
            if found is None:
                raise FVError(f"{_where(uf.folder)}: sampled_trials.json holds no trial with the prompts of trial {key} "
                              f"of {trials.get('path')}; compare with the trials they ran (fixed_trials)")
            out.append((key, found))
        if len({i for _k, i in out}) != len(theirs):
            raise FVError(f"{_where(uf.folder)}: {len(out)} trials compared, their StepD averaged all {len(theirs)} it ran "
                          "(its mean and every effect depend on them all); compare all of them (no max_trials)")
        return out

    def _plan(self, trials: dict, params: dict) -> tuple[dict, list[str]]:
        """The stages held (values) and the notes naming those left out."""
        uf, notes, values = self.files, [], {}
        mapping = self.trial_map(trials, params)
        n_layers, n_heads, n_slots = (int(x) for x in uf.mean.shape[:3])
        mm = uf.mean_meta
        swept = sorted(int(x) for x in mm.get("layers") or [])
        n_mean = int(mm.get("n_mean_trials", len(uf.trials)))
        shots = len(trials["file"]["trials"][0]["prompt_data_clean"]["examples"])
        labels = self.slot_labels()
        mean_ok = n_mean == len(mapping)
        if not mean_ok:
            notes.append(f"not compared: mean_activations, indirect_effect, top_heads, fv: their mean is over the first "
                         f"{n_mean} trials (--n_mean_trials), fv's over all {len(mapping)} compared")
        elif swept != list(range(n_layers)):
            notes.append(f"not compared: mean_activations: their StepD hooked layers {swept} only (the others hold "
                         f"zeros), of {n_layers}")
        elif int(mm.get("n_icl_examples", shots)) != shots or sum(lbl.startswith("demonstration_") and
                                                                  lbl.endswith("_label_token") for lbl in labels) != shots:
            notes.append(f"not compared: mean_activations: their slots are laid out for {mm.get('n_icl_examples')} "
                         f"demonstrations, the trials hold {shots}")
        elif int(mm.get("slot_query_pred", -1)) != n_slots - 1 or labels[-1] != QUERY_LABEL:
            notes.append(f"not compared: mean_activations: their query slot is {mm.get('slot_query_pred')}, the "
                         f"reference's layout puts {QUERY_LABEL} last (slot {n_slots - 1})")
        else:
            values["mean_activations"] = uf.mean
        missing = [(ti, layer, head) for _k, ti in mapping for layer in range(n_layers) for head in range(n_heads)
                   if (ti, layer, head) not in uf.metrics]
        if mean_ok and missing:
            notes.append(f"not compared: indirect_effect, top_heads, fv: trial_metrics.jsonl lacks {len(missing)} "
                         f"(trial, layer, head) cells of the {n_layers}x{n_heads} model, first {missing[0]} (their sweep "
                         "ran on some layers/heads only)")
        elif mean_ok:
            ie = torch.zeros(len(mapping), n_layers, n_heads, dtype=torch.float32)
            for i, (_k, ti) in enumerate(mapping):
                for layer in range(n_layers):
                    for head in range(n_heads):
                        r = uf.metrics[(ti, layer, head)]
                        p = torch.tensor([float(r["p_patch"]), float(r["p_base"])], dtype=torch.float32)
                        ie[i, layer, head] = p[0] - p[1]  # delta_p in float32, as the reference subtracts
            values["indirect_effect"] = ie
        if "indirect_effect" in values:
            self._plan_heads(params, values, notes, n_layers * n_heads)
        notes.append("not compared: prompt, slot: their files hold the prompt strings and the slot labels only (no token "
                     "ids, no per-trial slot map); every compared trial is matched to theirs by its prompt strings")
        notes.append("not compared: injection: their StepE eval (stepE_eval.json) keeps only the mean change of the "
                     "target's logit per layer, over corrupted prompts drawn with replacement, with fv_by_layer (the "
                     "heads' means placed in their blocks, not passed through o_proj) added at the last token")
        return values, notes

    def _plan_heads(self, params: dict, values: dict, notes: list[str], n_cells: int) -> None:
        uf = self.files
        k = int(params.get("n_top_heads", 10))
        th = uf.top_heads
        score_key = ((th or {}).get("meta") or {}).get("score_key")
        if th is None:
            notes.append("not compared: top_heads, fv: no top_heads.json (their StepE did not run here)")
            return
        if score_key != SCORE_KEY:
            notes.append(f"not compared: top_heads, fv: their heads are ranked by {score_key!r}, the reference's by the "
                         f"trial-mean indirect effect ({SCORE_KEY})")
            return
        heads = [(int(h["layer"]), int(h["head"])) for h in th["heads"]]
        rows = uf.scores or []
        ranked = sorted(((-float(r[SCORE_KEY]), int(r["layer"]), int(r["head"])) for r in rows if r.get(SCORE_KEY)))
        if len(ranked) != n_cells or [(lh[1], lh[2]) for lh in ranked[:len(heads)]] != heads:
            notes.append("not compared: top_heads, fv: top_heads.json is not the top of every head of this folder's "
                         "aie_scores.csv by mean_delta_p (their StepE ran on a layer subset or on another StepD folder)")
            return
        if len(heads) < k:
            notes.append(f"not compared: top_heads, fv: their top_heads.json holds {len(heads)} heads (k), n_top_heads is {k}")
            return
        # the reference reports each head's trial-mean indirect effect rounded to 4 decimals; theirs is unrounded
        values["top_heads"] = [[int(h["layer"]), int(h["head"]), round(float(h["rank_score"]), 4)] for h in th["heads"][:k]]
        fv_heads = [(int(h["layer"]), int(h["head"])) for h in (uf.fv_meta or {}).get("heads") or []]
        if uf.fv is None:
            notes.append("not compared: fv: no fv_global_resid.pt (their StepE stops on a fixed-trials folder's 4-D "
                         "mean_activations.pt before building it)")
        elif len(heads) != k:
            notes.append(f"not compared: fv: their fv_global_resid.pt sums their top {len(heads)} heads, n_top_heads is {k}")
        elif fv_heads and fv_heads != heads:
            notes.append(f"not compared: fv: fv_global_resid_meta.json names heads {fv_heads}, top_heads.json {heads}")
        else:
            values["fv"] = uf.fv

    def describe(self, trials: dict, params: dict) -> dict:
        uf = self.files
        _values, notes = self._plan(trials, params)
        return {"kind": KIND, "description": f"{KIND} in {uf.folder} ({', '.join(uf.files)})", "live": False,
                "dtype": uf.dtype,
                "notes": [f"their files: {uf.folder} ({', '.join(uf.files)})",
                          "indirect_effect = their trial_metrics.jsonl p_patch - p_base (float32); mean_activations = "
                          "their mean_activations.pt, slots as mean_activations_meta.json's dummy_labels"] + notes,
                "compat": False, "facts": {"port": KIND, "port_folder": str(uf.folder)}}

    def stage_values(self, trials: dict, params: dict) -> dict:
        values, _notes = self._plan(trials, params)
        return {"values": values, "durations": {}, "injection_error": None, "origin": "their files"}
