"""Pictures of results, drawn with matplotlib from the artifacts on disk (so ``fv results plot`` can redraw them).

- a run: the trial-mean indirect effect over (layer, head), and, when several edit layers ran, the evaluation
  against the edit layer (delta p, delta log-prob, accuracy);
- a relation run: one heatmap and one layer sweep per q, and every q's heatmap side by side;
- a diff: src, fv and their difference over (layer, head).

matplotlib is an optional extra, imported only here and only when a picture is asked for. Every function
returns ``Picture``s: the file and the arrays that were drawn, so tests can hold the picture to its artifacts.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fv.errors import FVError
from fv.io import atomic_write, load_tensor_file, read_json

IE_PNG = "indirect_effect_heatmap.png"
SWEEP_PNG = "eval_by_layer.png"
ALL_Q_PNG = "all_q_indirect_effect.png"
DIFF_PNG = IE_PNG  # in a diff folder: src, fv and their difference


class PlotsUnavailable(FVError):
    """matplotlib is not installed."""


@dataclass
class Picture:
    path: Path
    data: dict[str, np.ndarray] = field(default_factory=dict)


def _plt() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise PlotsUnavailable("pictures need matplotlib, which is not installed: pip install 'fv[plots]' (or pass --no-plots).") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# A picture records a digest of what it was drawn from (its arrays and title, and the drawing code's version) in
# a PNG text chunk under this key; a picture whose recorded digest matches is not drawn again (``unchanged``),
# so a completed q's pictures keep their bytes and time stamps when a relation run grows its q-list.
DIGEST_KEY = "fv-inputs-sha256"
DRAWING_VERSION = 1  # bump when a drawing function changes what it draws from the same inputs


def inputs_digest(title: str, data: dict[str, Any]) -> str:
    """sha256 of a picture's inputs: its title, and each array (name, dtype, shape, bytes) in name order."""
    import hashlib

    h = hashlib.sha256(f"v{DRAWING_VERSION}\0{title}".encode())
    for k in sorted(data):
        a = np.ascontiguousarray(np.asarray(data[k]))
        h.update(f"\0{k}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def recorded_digest(path: Path) -> str | None:
    """The inputs digest a picture written by ``_save`` records, None for any other file or none."""
    import struct
    import zlib

    try:
        raw = Path(path).read_bytes()
    except OSError:
        return None
    if raw[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    i = 8
    while i + 8 <= len(raw):
        n, kind = struct.unpack(">I4s", raw[i : i + 8])
        body = raw[i + 8 : i + 8 + n]
        if kind in (b"tEXt", b"zTXt", b"iTXt") and body.startswith(DIGEST_KEY.encode() + b"\0"):
            rest = body[len(DIGEST_KEY) + 1 :]
            try:
                if kind == b"zTXt":
                    rest = zlib.decompress(rest[1:])
                elif kind == b"iTXt":  # compression flag, method, language\0, translated keyword\0, text
                    flag, rest = rest[0], rest[2:]
                    rest = rest.split(b"\0", 2)[2]
                    rest = zlib.decompress(rest) if flag else rest
                return rest.decode("latin-1")
            except (zlib.error, IndexError):
                return None
        if kind == b"IEND":
            break
        i += 12 + n
    return None


def unchanged(path: Path, digest: str) -> bool:
    """``path`` exists and was drawn from inputs with this digest: drawing it again would write the same picture."""
    return Path(path).is_file() and recorded_digest(Path(path)) == digest


def _save(fig: Any, path: Path, digest: str | None = None) -> Path:
    plt = _plt()
    meta = {DIGEST_KEY: digest} if digest else None
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=150, bbox_inches="tight", metadata=meta), binary=True)
    finally:
        plt.close(fig)
    return path


def _heatmap(fig: Any, ax: Any, values: np.ndarray, title: str, label: str) -> None:
    """A (layer x head) grid on a diverging scale centred on zero; layer 0 at the top, as the paper draws it."""
    from matplotlib.colors import TwoSlopeNorm

    vmax = float(np.abs(values).max()) if values.size else 0.0
    vmax = vmax if vmax > 0 else 1e-12
    im = ax.imshow(values, cmap="RdBu_r", norm=TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax), aspect="auto",
                   interpolation="nearest")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("\n".join(textwrap.wrap(title, 64, break_on_hyphens=False)), fontsize=9)  # wrapped: a long title runs into the colour bar
    n_layers, n_heads = values.shape
    ax.set_xticks(range(n_heads) if n_heads <= 32 else range(0, n_heads, max(1, n_heads // 16)))
    ax.set_yticks(range(n_layers) if n_layers <= 40 else range(0, n_layers, max(1, n_layers // 20)))
    fig.colorbar(im, ax=ax, label=label, shrink=0.85)


def _describe(meta: dict) -> str:
    model = meta.get("model_name") or Path(str(meta.get("model_path", "model"))).name
    trials = meta.get("fixed_trials_id", "trials")
    q = f", {meta['q_id']}" if meta.get("q_id") else ""
    return f"{model}, {trials}{q}"


def mean_effect(ie: Any) -> np.ndarray:
    """The trial-mean indirect effect (layers, heads) of a (trials, layers, heads) tensor, as float64."""
    arr = ie.detach().to("cpu").double().numpy() if hasattr(ie, "detach") else np.asarray(ie, dtype=np.float64)
    return arr.mean(axis=0) if arr.ndim == 3 else arr


def _mark_heads(ax: Any, heads: Sequence[Sequence[float]], values: np.ndarray | None = None) -> np.ndarray:
    """Box each of ``heads`` ([layer, head, score], best first) on a heatmap and write its rank in it (up to 40), in
    white on a cell whose colour is dark (``values``, the heatmap's (layer, head) grid: |value| above 60% of the
    largest); returns the marked (layer, head) pairs, (n, 2)."""
    from matplotlib.patches import Rectangle

    vmax = float(np.abs(values).max()) if values is not None and values.size else 0.0
    for rank, (layer, head, _score) in enumerate(heads, 1):
        ax.add_patch(Rectangle((int(head) - 0.5, int(layer) - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.2))
        if len(heads) <= 40:
            dark = vmax > 0 and abs(float(values[int(layer), int(head)])) > 0.6 * vmax
            ax.text(int(head), int(layer), str(rank), ha="center", va="center", fontsize=6,
                    color="white" if dark else "black")
    return np.array([[int(l), int(h)] for l, h, _ in heads], dtype=np.int64).reshape(-1, 2)


def draw_indirect_effect(path: str | Path, ie: Any, title: str, force: bool = True,
                         heads: Sequence[Sequence[float]] | None = None) -> Picture:
    """The trial-mean indirect effect over (layer, head), the top ``heads`` ([layer, head, score], best first) boxed
    and ranked when given; unless ``force``, a picture already drawn from the same values and title is left as it is."""
    plt = _plt()
    values = mean_effect(ie)
    data: dict[str, Any] = {"mean_indirect_effect": values}
    if heads:
        data["heads"] = np.array([[int(l), int(h)] for l, h, _ in heads], dtype=np.int64).reshape(-1, 2)
    digest = inputs_digest(title, data)
    if not force and unchanged(Path(path), digest):
        return Picture(Path(path), data)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * values.shape[1] + 2.5), max(3.5, 0.25 * values.shape[0] + 1.5)))
    _heatmap(fig, ax, values, title + (f" (top {len(heads)} heads boxed)" if heads else ""),
             "mean indirect effect (delta p of the target)")
    if heads:
        _mark_heads(ax, heads, values)
    return Picture(_save(fig, Path(path), digest), data)


def _sweep_series(summaries: dict[int, dict]) -> dict[str, np.ndarray]:
    layers = sorted(summaries)
    out: dict[str, np.ndarray] = {"layer": np.array(layers, dtype=np.int64)}
    for ps in ("zero_shot", "shuffled"):
        for key in ("mean_delta_p", "mean_delta_logprob", "acc_base", "acc_with"):
            out[f"{ps}.{key}"] = np.array([summaries[L]["by_prompt_set"][ps][key] for L in layers], dtype=np.float64)
    return out


def draw_layer_sweep(path: str | Path, summaries: dict[int, dict], title: str, force: bool = True) -> Picture:
    """delta p, delta log-prob and accuracy of the target against the edit layer, per prompt set; unless ``force``,
    a picture already drawn from the same series and title is left as it is."""
    plt = _plt()
    data = _sweep_series(summaries)
    digest = inputs_digest(title, data)
    if not force and unchanged(Path(path), digest):
        return Picture(Path(path), data)
    x = data["layer"]
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharex=True, layout="constrained")
    styles = {"zero_shot": dict(color="tab:blue", marker="o"), "shuffled": dict(color="tab:orange", marker="s")}
    for ps, st in styles.items():
        axes[0].plot(x, data[f"{ps}.mean_delta_p"], label=ps.replace("_", "-"), **st)
        axes[1].plot(x, data[f"{ps}.mean_delta_logprob"], label=ps.replace("_", "-"), **st)
        axes[2].plot(x, data[f"{ps}.acc_with"], label=f"{ps.replace('_', '-')} with FV", **st)
        axes[2].plot(x, data[f"{ps}.acc_base"], label=f"{ps.replace('_', '-')} without", linestyle="--", color=st["color"])
    for ax, yl in zip(axes, ("mean delta p (target)", "mean delta log-prob (target)", "accuracy (top-1 = target)")):
        ax.set_xlabel("edit layer")
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[:2]:
        ax.axhline(0.0, color="grey", linewidth=0.6)
    axes[2].set_ylim(-0.05, 1.05)
    axes[2].legend(fontsize=7)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}: FV evaluation by edit layer", fontsize=10)
    return Picture(_save(fig, Path(path), digest), data)


def draw_small_multiples(path: str | Path, effects: dict[str, Any], title: str) -> Picture:
    """Every q's trial-mean indirect effect, one panel each, on one shared colour scale."""
    plt = _plt()
    from matplotlib.colors import TwoSlopeNorm

    names = list(effects)
    values = {q: mean_effect(effects[q]) for q in names}
    n = len(names)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    vmax = max((float(np.abs(v).max()) for v in values.values()), default=0.0) or 1e-12
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols + 1.2, 2.8 * rows), sharex=True, sharey=True, squeeze=False)
    im = None
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        im = ax.imshow(values[names[k]], cmap="RdBu_r", norm=TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax),
                       aspect="auto", interpolation="nearest")
        ax.set_title(names[k], fontsize=9)
        if k % cols == 0:
            ax.set_ylabel("layer")
        if k // cols == rows - 1:
            ax.set_xlabel("head")
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), label="mean indirect effect", shrink=0.8)
    fig.suptitle(f"{title}: indirect effect per q (one colour scale for all qs)", fontsize=10, y=1.04)
    return Picture(_save(fig, Path(path)), {f"{q}.mean_indirect_effect": v for q, v in values.items()})


def draw_diff(path: str | Path, src_ie: Any, fv_ie: Any, title: str) -> Picture:
    """src, fv and fv - src over (layer, head), each on its own scale centred on zero."""
    plt = _plt()
    a, b = mean_effect(src_ie), mean_effect(fv_ie)
    d = b - a
    fig, axes = plt.subplots(1, 3, figsize=(13, max(3.5, 0.25 * a.shape[0] + 1.5)))
    for ax, (name, v) in zip(axes, (("src", a), ("fv", b), ("fv - src", d))):
        _heatmap(fig, ax, v, f"{name}", "difference" if name == "fv - src" else "mean indirect effect")
    fig.suptitle(f"{title}: indirect effect, src vs fv (max |diff| {float(np.abs(d).max()) if d.size else 0.0:.3g})", fontsize=10)
    return Picture(_save(fig, Path(path)), {"src": a, "fv": b, "diff": d})


# ---- drawing a results folder from its artifacts ---------------------------------------------------------------

def _step6_summaries(folder: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for f in list(folder.glob("step6_results_L*.json")) + list(folder.glob("layer_*/step6_results.json")):
        d = read_json(f, "evaluation results")
        out[int(d["edit_layer"])] = d["summary"]
    return out


def draw_run(folder: str | Path, force: bool = True) -> list[Picture]:
    """A run folder's pictures: the indirect-effect heatmap, and the layer sweep when several layers ran. Unless
    ``force``, a picture whose recorded inputs digest matches its inputs now is not drawn again."""
    folder = Path(folder)
    ie_file = folder / "indirect_effect.pt"
    if not ie_file.is_file():
        return []
    meta_file = folder / "indirect_effect_meta.json"
    meta = read_json(meta_file, "run meta") if meta_file.is_file() else {}
    title = _describe(meta)
    heads_file = folder / "top_heads.json"
    heads = read_json(heads_file, "top heads") if heads_file.is_file() else None
    pics = [draw_indirect_effect(folder / IE_PNG, load_tensor_file(ie_file), f"{title}: indirect effect", force=force,
                                 heads=heads)]
    summaries = _step6_summaries(folder)
    if len(summaries) > 1:
        pics.append(draw_layer_sweep(folder / SWEEP_PNG, summaries, title, force=force))
    return pics


def draw_relation(root: str | Path, force: bool = False) -> list[Picture]:
    """A relation run's pictures: per q a heatmap and a layer sweep, and all qs side by side. A q's picture is
    drawn only when its inputs changed (its recorded digest differs, or it is missing), so a completed q's
    pictures keep their bytes and time stamps when the q-list grows; ``force`` draws every one."""
    root = Path(root)
    pics: list[Picture] = []
    effects: dict[str, Any] = {}
    for qdir in sorted(p for p in root.iterdir() if p.is_dir() and (p / "indirect_effect.pt").is_file()):
        pics += draw_run(qdir, force=force)
        effects[qdir.name] = load_tensor_file(qdir / "indirect_effect.pt")
    if effects:
        pics.append(draw_small_multiples(root / ALL_Q_PNG, effects, root.name))
    return pics


def draw_diff_folder(folder: str | Path) -> list[Picture]:
    """A diff report's heatmap, from the two indirect-effect files the report names."""
    folder = Path(folder)
    report = read_json(folder / "src_vs_fv_diff_report.json", "diff report")
    files = (report.get("artifacts") or {}).get("indirect_effect") or {}
    if not files.get("src") or not files.get("fv"):
        return []
    a, b = load_tensor_file(files["src"]), load_tensor_file(files["fv"])
    if tuple(a.shape) != tuple(b.shape):
        return []
    return [draw_diff(folder / DIFF_PNG, a, b, Path(report["fv"]).name)]


def redraw(results_dir: str | Path) -> list[Path]:
    """Every picture under ``results_dir``, redrawn from the artifacts alone."""
    root = Path(results_dir)
    if not root.is_dir():
        raise FVError(f"{root} is not a folder; give a folder written by fv runtime run, fv relation run or fv parity diff.")
    _plt()
    pics: list[Picture] = []
    relation_roots = {p.parent for p in root.rglob("relation_summary.json")}
    for r in sorted(relation_roots):
        pics += draw_relation(r, force=True)
    for ie in sorted(root.rglob("indirect_effect.pt")):
        if ie.parent.parent not in relation_roots:
            pics += draw_run(ie.parent)
    for rep in sorted(root.rglob("src_vs_fv_diff_report.json")):
        pics += draw_diff_folder(rep.parent)
    for aie in sorted(root.rglob("aie.pt")):  # fv universal folders
        pics += draw_universal(aie.parent)
    if not pics:
        raise FVError(f"found no artifacts to draw under {root} (indirect_effect.pt, relation_summary.json or src_vs_fv_diff_report.json).")
    return [p.path for p in pics]


__all__: Sequence[str] = ("PlotsUnavailable", "Picture", "draw_indirect_effect", "draw_layer_sweep", "draw_small_multiples",
                          "draw_diff", "draw_run", "draw_relation", "draw_diff_folder", "redraw")


# ---- fv universal --------------------------------------------------------------------------------------------
AIE_PNG = "aie_heatmap.png"
UNIVERSAL_SWEEP_PNG = "universal_fv_accuracy_by_layer.png"


def draw_aie(path: str | Path, aie: Any, heads: Sequence[Sequence[float]], title: str) -> Picture:
    """The AIE over (layer, head) with the universal heads boxed and ranked."""
    plt = _plt()
    values = mean_effect(aie)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * values.shape[1] + 2.5), max(3.5, 0.25 * values.shape[0] + 1.5)))
    _heatmap(fig, ax, values, title, "average indirect effect over kept tasks")
    marked = _mark_heads(ax, heads, values)
    return Picture(_save(fig, Path(path)), {"aie": values, "heads": marked})


def draw_universal_sweep(path: str | Path, by_task: dict[str, dict[int, dict]], title: str) -> Picture:
    """Per task, zero-shot accuracy with the task's universal FV (solid) and without it (dashed) against the edit layer."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(9, 4), layout="constrained")
    data: dict[str, np.ndarray] = {}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (task, summaries) in enumerate(by_task.items()):
        layers = sorted(summaries)
        x = np.array(layers, dtype=np.int64)
        zs = [summaries[L]["by_prompt_set"]["zero_shot"] for L in layers]
        with_, base = np.array([z["acc_with"] for z in zs]), np.array([z["acc_base"] for z in zs])
        c = colors[k % len(colors)]
        ax.plot(x, with_, marker="o", color=c, label=f"{task} with FV")
        ax.plot(x, base, linestyle="--", color=c, label=f"{task} without")
        data.update({f"{task}.layer": x, f"{task}.acc_with": with_, f"{task}.acc_base": base})
    ax.set_xlabel("edit layer")
    ax.set_ylabel("zero-shot accuracy (top-1 = target)")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    # beside the axes, not over them: with five tasks a legend inside hides the lines near 1.0
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title(f"{title}: each task's universal FV by edit layer", fontsize=10)
    return Picture(_save(fig, Path(path)), data)


def draw_universal(out: str | Path) -> list[Picture]:
    """An ``fv universal`` folder's pictures: the AIE heatmap with the chosen heads marked, and each task's
    zero-shot accuracy with and without its universal FV against the edit layer."""
    out = Path(out)
    if not (out / "aie.pt").is_file():
        return []
    tasks = read_json(out / "tasks.json", "tasks file")["tasks"]
    heads = read_json(out / "universal_top_heads.json", "universal heads")
    kept = [t["name"] for t in tasks if t["kept"]]
    title = f"{out.name}: AIE over {len(kept)} of {len(tasks)} tasks, top {len(heads)} heads"
    pics = [draw_aie(out / AIE_PNG, load_tensor_file(out / "aie.pt"), heads, title)]
    sweeps = {}
    for t in tasks:
        f = out / t["name"] / "universal_eval.json"
        if f.is_file():
            sweeps[t["name"]] = {int(L): s for L, s in read_json(f, "evaluation")["by_layer"].items()}
    if sweeps:
        pics.append(draw_universal_sweep(out / UNIVERSAL_SWEEP_PNG, sweeps, out.name))
    return pics
