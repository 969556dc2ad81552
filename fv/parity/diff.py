"""M5: compare a reference folder (``fv reference run --dump``) with an fv folder (``fv runtime run``) stage by stage, in
the order of docs/reference.md, and name the first place they part: stage, file, key, ``(trial_id, trial_idx)``, values.

Either folder may be in either layout (the reference's file names or fv's), so fv can also be diffed against a
copy of itself. A missing artifact is reported as missing, never a crash; shapes that differ are named; two
folders made from different fixed-trials files are refused before anything is compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from fv import schema
from fv.errors import FVError
from fv.io import load_tensor_file, read_json, write_json, write_text
from fv.parity.json_diff import walk_diffs
from fv.parity.pattern import describe, multi_token_slots
from fv.parity.registry import STAGES
from fv.parity.registry import stage as registry_stage
from fv.parity.tensor_diff import diff_tensors
from fv.parity.tolerance import BF16, EXACT, FP16, FP32, Tolerance

DIFF_STAGES = STAGES  # every parity stage, in data-flow order (fv.parity.registry)
DUMPS = ("src_reference_dump.json", "fv_runtime_dump.json")
ARTIFACTS = {
    "mean_activations": ("*_mean_head_activations_FIXED.pt", "mean_activations.pt"),
    "indirect_effect": ("*_indirect_effect.pt", "indirect_effect.pt"),
    "top_heads": ("top_heads_src.json", "top_heads.json"),
    "fv": ("src_fv.pt", "fv_global_resid.pt"),
}


def _find(folder: Path, patterns: tuple[str, ...]) -> Path | None:
    for pat in patterns:
        hits = sorted(folder.glob(pat))
        if hits:
            return hits[0]
    return None


def top_heads_rows(value: object) -> object:
    """Top heads as ``[[layer, head, score], ...]``: fv's and the reference's list form as it is, or the records form
    a port may write (``{"meta": ..., "heads": [{"layer", "head", "rank_score"}]}``, as sunsikham/my_fv_project's
    StepE does), its unrounded ``rank_score`` rounded to 4 decimals as the reference reports a head's score. Any
    other value is returned unchanged, for the schema check to name."""
    if isinstance(value, dict) and isinstance(value.get("heads"), list) and all(
            isinstance(h, dict) and {"layer", "head", "rank_score"} <= set(h) for h in value["heads"]):
        return [[h["layer"], h["head"], round(float(h["rank_score"]), 4)] for h in value["heads"]]
    return value


@dataclass
class SideFolder:
    root: Path
    dump: dict | None
    dump_file: str | None
    files: dict[str, Path | None] = field(default_factory=dict)
    top_heads: list | None = None  # ``[[layer, head, score], ...]``, whichever form the file holds

    @classmethod
    def open(cls, root: str | Path, role: str) -> "SideFolder":
        root = Path(root)
        if not root.is_dir():
            raise FVError(f"--{role} {root} is not a folder.")
        dump_path = _find(root, DUMPS)
        dump = None
        if dump_path is not None:
            dump = read_json(dump_path, f"--{role} dump")
            schema.check(dump, schema.DUMP, f"--{role} dump {dump_path}", "",
                         "Rewrite the folder with `fv runtime run` or `fv reference run --dump`.")
        files = {k: _find(root, v) for k, v in ARTIFACTS.items()}
        heads = None
        if files["top_heads"] is not None:
            heads = top_heads_rows(read_json(files["top_heads"], f"--{role} top heads"))
            schema.check(heads, schema.TOP_HEADS, f"--{role} top heads {files['top_heads']}", "",
                         "Rewrite the folder with `fv runtime run` or `fv reference run --dump`.")
        return cls(root, dump, dump_path.name if dump_path else None, files, heads)

    def trials_sha(self) -> str | None:
        return (self.dump or {}).get("meta", {}).get("fixed_trials_sha256")

    def slot_labels(self) -> list[str] | None:
        labels = (self.dump or {}).get("dummy_labels")
        return [str(l) for _p, l in labels] if labels else None

    def multi_token_slots(self) -> list[int] | None:
        if not self.dump:
            return None
        return multi_token_slots({"trials": {f"{t['trial_id']}:{t['trial_idx']}": t.get("slots", {}) for t in self.dump.get("trials", [])}})


@dataclass
class StageDiff:
    stage: str
    status: str  # PASS, FAIL, MISSING
    mismatch_count: int = 0
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0
    file: str | None = None
    note: str | None = None
    first: dict | None = None
    worst: dict | None = None
    pattern: str = ""

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        for k in ("max_abs_diff", "max_rel_diff"):
            if isinstance(d[k], float) and math.isinf(d[k]):
                d[k] = "inf"
        return d


def _by_key(dump: dict) -> dict[tuple, dict]:
    out: dict[tuple, dict] = {}
    for t in dump.get("trials", []):
        out.setdefault((t["trial_id"], t["trial_idx"]), t)
    return out


def _dup_keys(dump: dict) -> list[tuple]:
    seen, dups = set(), []
    for t in dump.get("trials", []):
        k = (t["trial_id"], t["trial_idx"])
        if k in seen:
            dups.append(k)
        seen.add(k)
    return dups


_TRIAL_FIELDS = {"prompt": ("clean_prompt_str", "corrupted_prompt_str", "clean_input_ids", "corrupted_input_ids", "target_id", "answer_ids"),
                 "slot": ("slots",), "injection": ("injection",)}


def _trial_stage(stage: str, src: SideFolder, fv: SideFolder, tol: Tolerance) -> StageDiff:
    if src.dump is None or fv.dump is None:
        missing = "src" if src.dump is None else "fv"
        return StageDiff(stage, "MISSING", note=f"no dump ({' or '.join(DUMPS)}) in the {missing} folder")
    file = f"{src.dump_file} | {fv.dump_file}"
    a, b = _by_key(src.dump), _by_key(fv.dump)
    count, first, worst = 0, None, 0.0
    for k in _dup_keys(src.dump) + _dup_keys(fv.dump):
        count += 1
        first = first or {"key": "trials", "trial_id": k[0], "trial_idx": k[1], "src": "duplicated key", "fv": "duplicated key"}
    if stage == "slot":
        for path, x, y, _d in walk_diffs(src.dump.get("dummy_labels"), fv.dump.get("dummy_labels"), tol, "dummy_labels"):
            count += 1
            first = first or {"key": path, "trial_id": None, "trial_idx": None, "src": x, "fv": y}
    for key in list(a) + [k for k in b if k not in a]:
        if key not in a or key not in b:
            count += 1
            first = first or {"key": "trials", "trial_id": key[0], "trial_idx": key[1],
                              "src": "present" if key in a else "missing", "fv": "present" if key in b else "missing"}
            continue
        for f in _TRIAL_FIELDS[stage]:
            for path, x, y, d in walk_diffs(a[key].get(f), b[key].get(f), tol, f):
                count += 1
                if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not math.isinf(d):
                    worst = max(worst, d)
                first = first or {"key": path, "trial_id": key[0], "trial_idx": key[1], "src": x, "fv": y}
            if stage == "injection":
                for path, x, y, d in walk_diffs(a[key].get(f), b[key].get(f), EXACT, f):
                    if isinstance(x, float) and isinstance(y, float):
                        worst = max(worst, d)
    if first:
        first = {"stage": stage, "file": file, **first}
    return StageDiff(stage, "PASS" if count == 0 else "FAIL", count, worst, file=file, first=first)


def _tensor_in(value: object, path: Path) -> object:
    """The tensor a ``.pt`` file holds: itself, or a dict's entry named as the file (``fv_global_resid.pt``:
    ``{"fv_global_resid": ...}``, as a port may save it) or its only tensor. Raises ``FVError`` naming the file."""
    import torch

    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        named = value.get(path.stem)
        tensors = [v for v in value.values() if isinstance(v, torch.Tensor)]
        if isinstance(named, torch.Tensor):
            return named
        if len(tensors) == 1:
            return tensors[0]
    keys = sorted(value) if isinstance(value, dict) else type(value).__name__
    raise FVError(f"{path}: expected a tensor, or a dict holding one (named {path.stem!r} or alone); found {keys}")


def _tensor_stage(stage: str, src: SideFolder, fv: SideFolder, tol: Tolerance) -> StageDiff:
    ps, pf = src.files.get(stage), fv.files.get(stage)
    if ps is None or pf is None:
        side = "src" if ps is None else "fv"
        return StageDiff(stage, "MISSING", note=f"{' or '.join(ARTIFACTS[stage])} missing in the {side} folder")
    file = f"{ps.name} | {pf.name}"
    a, b = _tensor_in(load_tensor_file(ps), ps), _tensor_in(load_tensor_file(pf), pf)
    if stage == "fv":
        a, b = a.reshape(-1), b.reshape(-1)
    tol = tol.for_stage(stage)
    d = diff_tensors(a, b, tol)
    if d.shapes_differ:
        return StageDiff(stage, "FAIL", 1, math.inf, math.inf, file, note=f"shapes differ: src {d.src_shape} vs fv {d.fv_shape}",
                         first={"stage": stage, "file": file, "key": "shape", "trial_id": None, "trial_idx": None,
                                "src": list(d.src_shape), "fv": list(d.fv_shape)})
    first = worst = None
    pattern = ""
    if d.norm_fail and not d.n_mismatch:
        first = {"stage": stage, "file": file, "key": "norm", "trial_id": None, "trial_idx": None,
                 "src": f"relative norm diff <= {tol.norm_rtol:.3g}", "fv": f"{d.rel_norm:.3g}"}
    if d.n_mismatch:
        idx = list(d.first_index or [])
        trial = _trial_at(src, idx[0]) if stage == "indirect_effect" and idx else (None, None)
        first = {"stage": stage, "file": file, "key": str(idx), "trial_id": trial[0], "trial_idx": trial[1],
                 "src": d.first_src, "fv": d.first_fv}
        wi = list(d.worst_index or [])
        wt = _trial_at(src, wi[0]) if stage == "indirect_effect" and wi else (None, None)
        worst = {"key": str(wi), "trial_id": wt[0], "trial_idx": wt[1], "src": d.src_value, "fv": d.fv_value, "abs_diff": d.max_abs}
        keys = [f"{t['trial_id']}:{t['trial_idx']}" for t in (src.dump or {}).get("trials", [])]
        pattern = describe(registry_stage(stage).dims, d.bad, src.slot_labels(), src.multi_token_slots(), keys or None)
    count = d.n_mismatch or int(d.norm_fail)
    return StageDiff(stage, "PASS" if count == 0 else "FAIL", count, d.max_abs, d.max_rel, file, first=first,
                     worst=worst, pattern=pattern)


def _trial_at(side: SideFolder, row: int) -> tuple:
    trials = (side.dump or {}).get("trials", [])
    return (trials[row]["trial_id"], trials[row]["trial_idx"]) if row < len(trials) else (None, row)


def _top_heads_stage(src: SideFolder, fv: SideFolder, tol: Tolerance) -> StageDiff:
    ps, pf = src.files.get("top_heads"), fv.files.get("top_heads")
    if ps is None or pf is None:
        return StageDiff("top_heads", "MISSING", note=f"top heads file missing in the {'src' if ps is None else 'fv'} folder")
    a, b = src.top_heads, fv.top_heads  # as rows, checked against schema.TOP_HEADS by SideFolder.open
    file = f"{ps.name} | {pf.name}"
    count, first, worst = 0, None, 0.0
    scale = math.sqrt(sum(float(h[2]) ** 2 for h in a) / len(a)) if a else 0.0
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else None
        y = b[i] if i < len(b) else None
        bad = x is None or y is None or x[:2] != y[:2] or not tol.close(float(y[2]), float(x[2]), scale)
        if x and y:
            worst = max(worst, abs(float(x[2]) - float(y[2])))
        if bad:
            count += 1
            first = first or {"stage": "top_heads", "file": file, "key": f"[{i}]", "trial_id": None, "trial_idx": None, "src": x, "fv": y}
    return StageDiff("top_heads", "PASS" if count == 0 else "FAIL", count, worst, file=file, first=first)


def diff_folders(src_dir: str | Path, fv_dir: str | Path, tol: Tolerance = EXACT) -> dict:
    """Compare a src folder with an fv folder stage by stage (``DIFF_STAGES``) under ``tol``: the report dict
    with status, each stage's result and the first divergence (stage, file, key, trial, values).

    Raises FVError when a path is not a folder or the two were made from different fixed-trials files.
    """
    src, fv = SideFolder.open(src_dir, "src"), SideFolder.open(fv_dir, "fv")
    sa, sb = src.trials_sha(), fv.trials_sha()
    if sa and sb and sa != sb:
        raise FVError(f"the two folders were made from different fixed-trials files (sha256 {sa[:12]}... vs {sb[:12]}...); "
                      "rerun both on the same --fixed-trials before comparing.")
    stages: list[StageDiff] = []
    for s in DIFF_STAGES:
        if s in ("prompt", "slot", "injection"):
            stages.append(_trial_stage(s, src, fv, tol))
        elif s == "top_heads":
            stages.append(_top_heads_stage(src, fv, tol))
        else:
            stages.append(_tensor_stage(s, src, fv, tol))
    first = next((st.first for st in stages if st.first), None)
    if first is None:
        miss = next((st for st in stages if st.status == "MISSING"), None)
        if miss:
            first = {"stage": miss.stage, "file": None, "key": "missing", "trial_id": None, "trial_idx": None, "src": None, "fv": miss.note}
    status = "PASS" if all(st.status == "PASS" for st in stages) else "FAIL"
    artifacts = {k: {"src": str(src.files[k]) if src.files.get(k) else None, "fv": str(fv.files[k]) if fv.files.get(k) else None}
                 for k in ARTIFACTS}
    return {"status": status, "tolerance": tol.__dict__, "src": str(src.root), "fv": str(fv.root), "artifacts": artifacts,
            "mismatch_count": sum(st.mismatch_count for st in stages), "first_divergence": first,
            "stages": [st.as_dict() for st in stages]}


def write_diff_report(report: dict, out_dir: str | Path, plots: bool = True) -> dict[str, Path]:
    """Write ``report`` into ``out_dir`` as ``src_vs_fv_diff_report.json`` and ``.md`` (and, with ``plots``, the
    indirect-effect heatmap PNG when it can be drawn); returns the paths by kind (``json``, ``md``, ``png``).
    """
    out = Path(out_dir)
    paths = {"json": write_json(out / "src_vs_fv_diff_report.json", report)}
    img = None
    if plots:
        from fv.plots import PlotsUnavailable, draw_diff_folder

        try:
            pics = draw_diff_folder(out)
            img = pics[0].path if pics else None
        except PlotsUnavailable as exc:
            report.setdefault("notes", []).append(str(exc))
    if img:
        paths["png"] = img
    lines = [f"# src vs fv: {report['status']}", "", f"- src: `{report['src']}`", f"- fv: `{report['fv']}`",
             f"- tolerance: {report['tolerance']['name']} (atol {report['tolerance']['atol']}, rtol {report['tolerance']['rtol']})", ""]
    fd = report["first_divergence"]
    if fd is None:
        lines.append("**First divergence: none.** Every stage agrees.")
    else:
        where = "" if fd.get("trial_id") is None and fd.get("trial_idx") is None else f", trial ({fd['trial_id']}, {fd['trial_idx']})"
        lines.append(f"**First divergence:** stage `{fd['stage']}`, file `{fd['file']}`, key `{fd['key']}`{where}: "
                     f"src `{str(fd['src'])[:80]}` vs fv `{str(fd['fv'])[:80]}`")
    for s in report["stages"]:
        if s.get("pattern"):
            lines.append(f"- `{s['stage']}`: {s['pattern']}")
        if s.get("worst"):
            w = s["worst"]
            lines.append(f"- `{s['stage']}` worst element: key `{w['key']}`, src `{w['src']}` vs fv `{w['fv']}` (abs diff {w['abs_diff']:.3g})")
    lines += ["", "| stage | status | mismatch_count | max_abs_diff | max_rel_diff | note |", "|---|---|---|---|---|---|"]
    for s in report["stages"]:
        lines.append(f"| {s['stage']} | {s['status']} | {s['mismatch_count']} | {s['max_abs_diff']} | {s['max_rel_diff']} | {s['note'] or ''} |")
    if img:
        lines += ["", "## Indirect effect per (layer, head)", "",
                  "Rows are layers (0 at the top), columns heads. Panels: src and fv, each the mean over trials, and fv - src; "
                  "red above zero, blue below, each panel on its own scale centred on zero.",
                  "", f"![indirect effect heatmaps]({img.name})"]
    paths["md"] = write_text(out / "src_vs_fv_diff_report.md", "\n".join(lines) + "\n")
    return paths


TOLERANCES = {"exact": EXACT, "fp32": FP32, "fp16": FP16, "bf16": BF16}  # fv.parity.compare: origins
