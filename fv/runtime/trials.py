"""Fixed trials: make, load, validate and verify the JSON files that pin every prompt for both sides.

The schema is the user's (docs/reference.md, "Fixed trials"), read and written as is. Two makers: ``make_icl_trials`` for an
antonym-style dataset (the reference's split, numpy's default_rng draws) and ``make_relation_trials`` for
relation data q by q (Python's random). Everything except token ids is independent of the tokenizer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from fv import schema
from fv.errors import FVError
from fv.io import read_json, sha256_file, write_json
from fv.runtime.datasets import load_icl_dataset, load_relation_csv, split_indices
from fv.runtime.prompts import DEFAULT_PREFIXES, DEFAULT_SEPARATORS, answer_ids, make_prompt_data, prompt_string

ICL_TRIAL_KEYS = (
    "trial_id", "demo_indices_in_train", "query_index_in_valid", "demos_clean", "demos_corrupted", "query",
    "prompt_data_clean", "prompt_data_corrupted", "clean_prompt_str", "corrupted_prompt_str", "target_str",
    "answer_ids", "first_token_id", "target_first_token_id",
)
RELATION_TRIAL_KEYS = (
    "q_id", "query_source_index", "demo_source_indices", "demo_order", "demos_clean", "demos_corrupted", "query",
    "clean_prompt_str", "corrupted_prompt_str", "prompt_data_clean", "prompt_data_corrupted", "target_str",
    "target_first_token_id", "answer_ids",
)
# Fields the tokenizer decides; the rest of a trials file must not change with the tokenizer.
TOKEN_KEYS = ("answer_ids", "first_token_id", "target_first_token_id")


def _pairs(demos: Sequence[dict]) -> list[dict]:
    return [{"input": d["input"], "output": d["output"]} for d in demos]


def _token_fields(tokenizer: Any, prompt: str, target: str, relation: bool) -> dict:
    ids = answer_ids(tokenizer, prompt, target)
    if relation:
        return {"target_first_token_id": ids[0], "answer_ids": ids}
    return {"answer_ids": ids, "first_token_id": ids[0], "target_first_token_id": ids[0]}


def make_icl_trials(
    dataset_path: str | Path,
    tokenizer: Any,
    n_trials: int = 10,
    n_shots: int = 10,
    seed: int = 0,
    test_split: float = 0.3,
    model_name_for_tokenizer: str = "",
    model_prepend_bos: bool = True,
    prepend_bos_token_used: bool = False,
    prefixes: dict | None = None,
    separators: dict | None = None,
    dataset_json_label: str | None = None,
) -> dict:
    """A fixed-trials dict for an ICL dataset, drawn exactly as docs/reference.md says."""
    rows = load_icl_dataset(dataset_path)
    prefixes = dict(prefixes or DEFAULT_PREFIXES)
    separators = dict(separators or DEFAULT_SEPARATORS)
    splits = split_indices(len(rows), test_split, seed)
    train = [rows[i] for i in splits.train]
    valid = [rows[i] for i in splits.valid]
    if n_shots > len(train):
        raise FVError(f"{n_shots} shots asked, but the train split of {dataset_path} has only {len(train)} rows. Use fewer --n-shots.")
    if n_shots < 1 or n_trials < 1:
        raise FVError(f"--n-shots and --n-trials must be at least 1; found {n_shots} and {n_trials}.")
    rng = np.random.default_rng(seed)
    trials = []
    for t in range(n_trials):
        demo_idx = rng.choice(len(train), n_shots, replace=False)
        q_idx = rng.choice(len(valid), 1, replace=False)
        demos = [(train[i]["input"], train[i]["output"]) for i in demo_idx]
        q = valid[int(q_idx[0])]
        shuffled = rng.permutation([d[1] for d in demos]).tolist()
        corrupted = [(d[0], o) for d, o in zip(demos, shuffled)]
        trials.append(_trial_body(
            {"trial_id": t, "demo_indices_in_train": [int(i) for i in demo_idx], "query_index_in_valid": int(q_idx[0])},
            demos, corrupted, (q["input"], q["output"]), tokenizer, prefixes, separators, prepend_bos_token_used,
            relation=False,
        ))
    meta = {
        "dataset_json": dataset_json_label if dataset_json_label is not None else str(dataset_path),
        "seed": seed, "n_trials": n_trials, "n_shots": n_shots, "test_split": test_split,
        "prefixes": prefixes, "separators": separators, "model_name_for_tokenizer": model_name_for_tokenizer,
        "model_prepend_bos": model_prepend_bos, "prepend_bos_token_used": prepend_bos_token_used,
    }
    return {"meta": meta, "splits": {"train_indices": splits.train, "valid_indices": splits.valid, "test_indices": splits.test}, "trials": trials}


def _trial_body(head: dict, demos, corrupted, query, tokenizer, prefixes, separators, bos_text: bool, relation: bool) -> dict:
    clean = make_prompt_data(demos, query, prefixes, separators, prepend_bos_token=bos_text)
    corr = make_prompt_data(corrupted, query, prefixes, separators, prepend_bos_token=bos_text)
    clean_str, corr_str = prompt_string(clean), prompt_string(corr)
    target = clean["query_target"]["output"]
    if relation:  # the user's relation files hold the CSV cells as written; the prompt's space lives in the prompt data
        body = {"demos_clean": _pairs([{"input": a, "output": b} for a, b in demos]),
                "demos_corrupted": _pairs([{"input": a, "output": b} for a, b in corrupted]),
                "query": {"input": query[0], "output": query[1]}}
    else:  # ICL files restate the prompt data, leading space included
        body = {"demos_clean": _pairs(clean["examples"]), "demos_corrupted": _pairs(corr["examples"]),
                "query": dict(clean["query_target"])}
    if relation:
        return {**head, **body, "clean_prompt_str": clean_str, "corrupted_prompt_str": corr_str,
                "prompt_data_clean": clean, "prompt_data_corrupted": corr, "target_str": target,
                **_token_fields(tokenizer, clean_str, target, relation=True)}
    return {**head, **body, "prompt_data_clean": clean, "prompt_data_corrupted": corr, "clean_prompt_str": clean_str,
            "corrupted_prompt_str": corr_str, "target_str": target, **_token_fields(tokenizer, clean_str, target, relation=False)}


@dataclass
class RelationPlan:
    """Which qs a relation file yields trials for, and which were skipped with their row counts."""

    q_ids: list[str]
    skipped: list[dict] = field(default_factory=list)


def plan_relation_qs(groups: dict[str, list], n_demos: int, q_list: Sequence[str] | None = None) -> RelationPlan:
    """q order (string sort unless a list is given) and the qs too small for ``n_demos + 1`` rows."""
    if q_list:
        missing = [q for q in q_list if q not in groups]
        if missing:
            raise FVError(f"q ids {missing} are not in the relation CSV; it has {sorted(groups)}.")
        order = list(q_list)
    else:
        order = sorted(groups)
    plan = RelationPlan(q_ids=[])
    for q in order:
        n = len(groups[q])
        if n < n_demos + 1:
            plan.skipped.append({"q_id": q, "n_rows": n, "reason": f"needs at least {n_demos + 1} rows (n_demos + 1)"})
        else:
            plan.q_ids.append(q)
    return plan


def make_relation_trials(
    csv_path: str | Path,
    tokenizer: Any,
    n_trials_per_q: int = 25,
    n_demos: int = 9,
    seed: int = 0,
    q_list: Sequence[str] | None = None,
    model_name_for_tokenizer: str = "",
    model_prepend_bos: bool = True,
    prepend_bos_token_used: bool = False,
) -> dict:
    """Relation fixed trials, q-wise, by the rule of docs/reference.md (Python's random, one shuffle of all trials at the end)."""
    if n_demos < 1 or n_trials_per_q < 1:
        raise FVError(f"--n-demos and --n-trials-per-q must be at least 1; found {n_demos} and {n_trials_per_q}.")
    groups = load_relation_csv(csv_path)
    plan = plan_relation_qs(groups, n_demos, q_list)
    if not plan.q_ids:
        raise FVError(f"relation CSV {csv_path}: no q has the {n_demos + 1} rows that --n-demos {n_demos} needs "
                      f"(largest: {max(len(v) for v in groups.values())} rows). Use fewer --n-demos.")
    rng = random.Random(seed)
    trials = []
    for q in plan.q_ids:
        rows = groups[q]
        n = len(rows)
        for _ in range(n_trials_per_q):
            qi = rng.randrange(n)
            others = [i for i in range(n) if i != qi]
            rng.shuffle(others)
            demo_idx = others[:n_demos]
            demos = [rows[i] for i in demo_idx]
            outs = [d[1] for d in demos]
            shuffled = list(outs)
            rng.shuffle(shuffled)
            if shuffled == outs and len(outs) > 1:
                rng.shuffle(shuffled)
            corrupted = [(d[0], o) for d, o in zip(demos, shuffled)]
            head = {"q_id": q, "query_source_index": qi, "demo_source_indices": demo_idx, "demo_order": others}
            trials.append(_trial_body(head, demos, corrupted, rows[qi], tokenizer, DEFAULT_PREFIXES, DEFAULT_SEPARATORS,
                                      prepend_bos_token_used, relation=True))
    rng.shuffle(trials)
    meta = {
        "relation_csv": str(csv_path), "seed": seed, "n_trials_per_q": n_trials_per_q, "n_demos": n_demos,
        "q_ids": plan.q_ids, "skipped_qs": plan.skipped, "prefixes": dict(DEFAULT_PREFIXES),
        "separators": dict(DEFAULT_SEPARATORS), "model_name_for_tokenizer": model_name_for_tokenizer,
        "model_prepend_bos": model_prepend_bos, "prepend_bos_token_used": prepend_bos_token_used,
    }
    return {"meta": meta, "trials": trials}


@dataclass(frozen=True)
class Trial:
    """One trial as every stage sees it, whatever file form it came from."""

    trial_id: Any
    trial_idx: int
    prompt_data_clean: dict
    prompt_data_corrupted: dict
    clean_prompt_str: str
    corrupted_prompt_str: str
    target_str: str
    first_token_id: int
    answer_ids: tuple[int, ...]
    q_id: str | None = None

    @property
    def key(self) -> tuple[Any, int]:
        return (self.trial_id, self.trial_idx)


@dataclass
class FixedTrials:
    """A loaded fixed-trials file: its raw dict, its id (file stem), sha256, and normalized trials."""

    path: Path
    raw: dict
    trials: list[Trial]
    sha256: str

    @property
    def id(self) -> str:
        return self.path.stem

    @property
    def meta(self) -> dict:
        return self.raw.get("meta", {})

    @property
    def n_shots(self) -> int:
        return len(self.trials[0].prompt_data_clean["examples"])

    @property
    def dataset_name(self) -> str:
        src = self.meta.get("dataset_json") or self.meta.get("relation_csv") or self.id
        return Path(str(src)).stem

    def subset(self, max_trials: int | None) -> list[Trial]:
        return self.trials if not max_trials else self.trials[:max_trials]


_REGENERATE = "Fix the file or remake it with `fv trials make`."


def _check_trial(t: Any, idx: int, where: str) -> bool:
    """Schema of one trial (ICL or relation, told apart by ``q_id``) and the agreements between its fields."""
    at = f"trials[{idx}]"
    if not isinstance(t, dict):
        schema.check(t, schema.ICL_TRIAL, where, at, _REGENERATE)
    relation = "q_id" in t
    schema.check(t, schema.RELATION_TRIAL if relation else schema.ICL_TRIAL, where, at, _REGENERATE)
    n = len(t["prompt_data_clean"]["examples"])
    lengths = {f"{at}.prompt_data_corrupted.examples": len(t["prompt_data_corrupted"]["examples"]),
               f"{at}.demos_clean": len(t["demos_clean"]), f"{at}.demos_corrupted": len(t["demos_corrupted"]),
               f"{at}.{'demo_source_indices' if relation else 'demo_indices_in_train'}":
                   len(t["demo_source_indices" if relation else "demo_indices_in_train"])}
    for path, m in lengths.items():
        if m != n:
            raise FVError(f"{where}: {path}: expected {n} entries (as many as {at}.prompt_data_clean.examples), found {m}. {_REGENERATE}")
    # the demos and the query restate the prompt data (relation files may drop the prompt's leading space)
    for demos, side in (("demos_clean", "prompt_data_clean"), ("demos_corrupted", "prompt_data_corrupted")):
        for i, (d, e) in enumerate(zip(t[demos], t[side]["examples"])):
            for k in ("input", "output"):
                if d[k].strip() != e[k].strip():
                    raise FVError(f"{where}: {at}.{demos}[{i}].{k}: expected {e[k]!r} as in {at}.{side}.examples[{i}], "
                                  f"found {schema.describe(d[k])}. {_REGENERATE}")
    for k in ("input", "output"):
        q, qt = t["query"][k], t["prompt_data_clean"]["query_target"][k]
        if q.strip() != qt.strip():
            raise FVError(f"{where}: {at}.query.{k}: expected {qt!r} as in {at}.prompt_data_clean.query_target, "
                          f"found {schema.describe(q)}. {_REGENERATE}")
    for side, s in (("prompt_data_clean", "clean_prompt_str"), ("prompt_data_corrupted", "corrupted_prompt_str")):
        rendered = prompt_string(t[side])
        if rendered != t[s]:
            raise FVError(f"{where}: {at}.{s} does not match what {at}.{side} renders to; "
                          f"{schema.text_difference(rendered, t[s])}. {_REGENERATE}")
    target = t["prompt_data_clean"]["query_target"]["output"]
    if t["target_str"] != target:
        raise FVError(f"{where}: {at}.target_str: expected {target!r} (prompt_data_clean.query_target.output), "
                      f"found {schema.describe(t['target_str'])}. {_REGENERATE}")
    ids = t["answer_ids"]
    firsts = ("target_first_token_id",) if relation else ("first_token_id", "target_first_token_id")
    for k in firsts:
        if t[k] != ids[0]:
            raise FVError(f"{where}: {at}.{k}: expected answer_ids[0] = {ids[0]}, found {t[k]}. {_REGENERATE}")
    return relation


def validate_trials(raw: Any, where: str) -> list[Trial]:
    """Check a fixed-trials dict once, where it enters: its schema (docs/reference.md, "Fixed trials"), list
    lengths, unique trial ids, one shot count, and that every stored prompt string is what its prompt data
    renders to. Later stages index the trials without guarding; every failure is one FVError line that
    names the file and the JSON path."""
    where = where if where.startswith("fixed-trials file") else f"fixed-trials file {where}"
    schema.check(raw, schema.TRIALS_FILE, where, "", _REGENERATE)
    out: list[Trial] = []
    first_n: int | None = None
    kinds: set[bool] = set()
    seen_ids: dict[Any, int] = {}
    for idx, t in enumerate(raw["trials"]):
        kinds.add(_check_trial(t, idx, where))
        if len(kinds) > 1:
            raise FVError(f"{where}: trials[{idx}]: ICL trials (with trial_id) and relation trials (with q_id) are mixed; "
                          f"one file holds one kind. {_REGENERATE}")
        n = len(t["prompt_data_clean"]["examples"])
        if first_n is None:
            first_n = n
        elif n != first_n:
            raise FVError(f"{where}: trials[{idx}].prompt_data_clean.examples: expected {first_n} examples like trials[0] "
                          f"(one file holds one shot count), found {n}. {_REGENERATE}")
        if "trial_id" in t:
            tid = t["trial_id"]
            if tid in seen_ids:
                raise FVError(f"{where}: trials[{idx}].trial_id: expected a trial_id not used before, found {tid!r}, "
                              f"already at trials[{seen_ids[tid]}]; (trial_id, trial_idx) must name one trial. {_REGENERATE}")
            seen_ids[tid] = idx
        out.append(Trial(
            trial_id=t.get("trial_id", idx), trial_idx=idx, prompt_data_clean=t["prompt_data_clean"],
            prompt_data_corrupted=t["prompt_data_corrupted"], clean_prompt_str=t["clean_prompt_str"],
            corrupted_prompt_str=t["corrupted_prompt_str"], target_str=t["target_str"],
            first_token_id=int(t.get("first_token_id", t["target_first_token_id"])),
            answer_ids=tuple(int(i) for i in t["answer_ids"]), q_id=t.get("q_id"),
        ))
    meta = raw.get("meta") or {}
    shots_key = "n_demos" if kinds == {True} else "n_shots"
    if shots_key in meta and meta[shots_key] != first_n:
        raise FVError(f"{where}: meta.{shots_key}: expected {first_n} (the examples in each trial), found {meta[shots_key]}. {_REGENERATE}")
    return out


def load_trials(path: str | Path) -> FixedTrials:
    """Read (UTF-8, BOM allowed) and validate a fixed-trials file; the only door trials come in by."""
    raw = read_json(path, "fixed-trials file")
    return FixedTrials(path=Path(path), raw=raw, trials=validate_trials(raw, f"fixed-trials file {path}"), sha256=sha256_file(path))


def save_trials(path: str | Path, trials: dict) -> Path:
    """Validate a fixed-trials dict (``validate_trials``: FVError on any fault) and write it to ``path`` as JSON,
    atomically; returns the path.
    """
    validate_trials(trials, str(path))
    return write_json(path, trials)


@dataclass
class TokenMismatch:
    trial_id: Any
    trial_idx: int
    field: str
    in_file: Any
    recomputed: Any
    cause: str = ""  # in words (target_cause): BOS, a lone ▁, or another continuation

    def __str__(self) -> str:
        return (f"trial {self.trial_id} (index {self.trial_idx}): {self.field} in file {self.in_file}, tokenizer gives "
                f"{self.recomputed}" + (f": {self.cause}" if self.cause else ""))


def verify_token_ids(trials: FixedTrials, tokenizer: Any, verify_n: int | None = None) -> list[TokenMismatch]:
    """Recompute each trial's answer ids with ``tokenizer`` and list every disagreement with the file."""
    out: list[TokenMismatch] = []
    for tr in trials.subset(verify_n):
        ids = answer_ids(tokenizer, tr.clean_prompt_str, tr.target_str)
        if tuple(ids) != tr.answer_ids:
            out.append(TokenMismatch(tr.trial_id, tr.trial_idx, "answer_ids", list(tr.answer_ids), ids,
                                     target_cause(tokenizer, tr.answer_ids, ids)))
        elif ids[0] != tr.first_token_id:
            out.append(TokenMismatch(tr.trial_id, tr.trial_idx, "first_token_id", tr.first_token_id, ids[0],
                                     target_cause(tokenizer, [tr.first_token_id], ids[:1])))
    return out


def require_tokenizer_agrees(trials: FixedTrials, tokenizer: Any) -> None:
    """Refuse to run stages on a trials file made with another tokenizer: its target ids would be wrong."""
    bad = verify_token_ids(trials, tokenizer)
    if bad:
        raise FVError(
            f"fixed-trials file {trials.path} disagrees with this model's tokenizer in {len(bad)} trial(s); first: {bad[0]}. "
            "Remake it with `fv trials make --tokenizer <model folder>`."
        )

# ---- the target ids -----------------------------------------------------------------------------------------
# The target's token ids, checked against their one definition (docs/reference.md, "Fixed trials"):
# ``answer_ids = ids(prompt + target)[len(ids(prompt)):]``, the first of them the target id the indirect effect and
# the evaluation score.
#
# Forks and teaching material often take it as ``tokenizer(target)["input_ids"][0]``. On a tokenizer that adds BOS
# that is the BOS id; on a Metaspace (SentencePiece) tokenizer it can be a lone ``▁`` (the target's leading space as
# a piece of its own); either way the indirect effect is the probability change of a token the model never
# predicts there, about 0 everywhere, and both sides agree on it, so parity alone cannot see it. Each mismatch is
# named in words: "the target's first token is BOS", "a lone ▁", or "differs from the prompt's continuation".
#
# Used by M0 (``tests/parity/test_m0_fixed_trials.py::test_target_ids``), by ``fv trials verify`` and by every
# token-id check of a trials file (``fv.runtime.trials.verify_token_ids``).

BOS_CAUSE = "the target's first token is BOS"
LONE_SPACE_CAUSE = "a lone ▁"
CONTINUATION_CAUSE = "differs from the prompt's continuation"
METASPACE = "\u2581"


def expected_ids(tokenizer: Any, prompt: str, target: str) -> list[int]:
    """``ids(prompt + target)[len(ids(prompt)):]``, the target's ids in context."""
    return answer_ids(tokenizer, prompt, target)


def _piece(tokenizer: Any, token_id: int) -> str | None:
    try:
        piece = tokenizer.convert_ids_to_tokens(int(token_id))
    except Exception:  # an id outside the vocabulary: no piece to name
        return None
    return piece if isinstance(piece, str) else None


def target_cause(tokenizer: Any, found: Sequence[int], expected: Sequence[int]) -> str:
    """In words, why ``found`` (a side's target ids) is not ``expected`` (the prompt's continuation)."""
    found, expected = [int(i) for i in found], [int(i) for i in expected]
    if not found:
        return f"no target ids; {CONTINUATION_CAUSE} ({expected})"
    first = found[0]
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and first == int(bos) and (not expected or expected[0] != first):
        return (f"{BOS_CAUSE} ({getattr(tokenizer, 'bos_token', None)!r}, id {first}): the target was tokenized alone on a "
                f"tokenizer that adds BOS (tokenizer(target).input_ids[0]); the prompt's continuation starts with {expected[:1]}")
    if _piece(tokenizer, first) == METASPACE and (not expected or expected[0] != first):
        return (f"{LONE_SPACE_CAUSE} (id {first}): the target's leading space as a piece of its own, as a Metaspace "
                f"(SentencePiece) tokenizer gives the target tokenized alone; the prompt's continuation starts with {expected[:1]}")
    at = next((i for i, (a, b) in enumerate(zip(found, expected)) if a != b), min(len(found), len(expected)))
    return (f"{CONTINUATION_CAUSE} at position {at}: {found} where ids(prompt + target) minus ids(prompt) give {expected} "
            f"(pieces {[_piece(tokenizer, i) for i in found[:3]]} vs {[_piece(tokenizer, i) for i in expected[:3]]})")


@dataclass(frozen=True)
class TargetProblem:
    trial_id: Any
    trial_idx: int
    side: str  # "file first_token_id", "file answer_ids", "reference", ...
    found: tuple[int, ...]
    expected: tuple[int, ...]
    cause: str

    def __str__(self) -> str:
        return f"trial {self.trial_id} (index {self.trial_idx}): {self.side} {list(self.found)}: {self.cause}"


def file_ids(raw_trial: Mapping | None, trial: Any) -> dict[str, list[int]]:
    """The target ids a trials file states for one trial, by field (the raw dict when at hand, else the loaded trial)."""
    if raw_trial is not None:
        out = {"answer_ids": [int(i) for i in raw_trial.get("answer_ids", [])]}
        for k in ("first_token_id", "target_first_token_id"):
            if k in raw_trial:
                out[k] = [int(raw_trial[k])]
        return out
    return {"answer_ids": list(trial.answer_ids), "first_token_id": [int(trial.first_token_id)]}


def check_target_ids(trials: Iterable[Any], tokenizer: Any, raw_trials: Sequence[Mapping] | None = None,
                     reference_ids: Mapping[Any, Sequence[int]] | None = None) -> list[TargetProblem]:
    """Every target id a trials file (``trials``: loaded ``Trial`` objects, ``raw_trials`` their dicts by
    ``trial_idx``) and the reference (``reference_ids``: trial key ``(trial_id, trial_idx)`` -> the ids it scores)
    state, compared with ``ids(prompt + target)[len(ids(prompt)):]``; the single-id fields and the reference's
    first id are compared with its first id. One problem per side and trial, with its cause in words."""
    out: list[TargetProblem] = []
    for t in trials:
        want = expected_ids(tokenizer, t.clean_prompt_str, t.target_str)
        raw = raw_trials[t.trial_idx] if raw_trials is not None and t.trial_idx < len(raw_trials) else None
        sides = {f"file {k}": v for k, v in file_ids(raw, t).items()}
        if reference_ids is not None and t.key in reference_ids:
            sides["reference's target id"] = [int(i) for i in reference_ids[t.key]]
        for side, found in sides.items():
            expected = want if side == "file answer_ids" else want[:1]
            found = found if side == "file answer_ids" else found[:1]
            if list(found) != list(expected):
                out.append(TargetProblem(t.trial_id, t.trial_idx, side, tuple(found), tuple(expected),
                                         target_cause(tokenizer, found, expected)))
    return out


def target_summary(problems: Sequence[TargetProblem]) -> str:
    """One line: how many trials and sides, and the causes named."""
    causes = sorted({p.cause.split(" (")[0].split(" at position")[0] for p in problems})
    trials = len({(p.trial_id, p.trial_idx) for p in problems})
    return f"target ids: {len(problems)} mismatch(es) in {trials} trial(s): {'; '.join(causes)}"
