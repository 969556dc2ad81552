"""The session object: what one pytest process (or xdist worker) holds for the whole session, loaded or computed
once and shared by every test that asks: the models (fv's and the reference's own copies), the fixed trials it
made, the reference adapter, and the parity runs (or the one failure each ended in).

The functions below take the session's ``FVOptions`` and are what fixtures and tests call (``parity_for``,
``trials_for``, ``load_session_model``, ``get_reference``, ``reference_own_model``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fv.errors import FVError
from fv.pytest_plugin.options import FVOptions
from fv.pytest_plugin.summary import EMPTY_GATE, SAME_FAILURE


@dataclass
class FVSession:
    """The session's state: models by (name, device, dtype, attention) and the reference's own copies by (src,
    spec, device); trials by what they were made from; parity runs by (model, trials, parameters, other side);
    references by (src, baukit, compat); and the parity keys whose failure was already reported."""

    models: dict[tuple, Any] = field(default_factory=dict)
    trials: dict[tuple, Any] = field(default_factory=dict)
    parity: dict[tuple, Any] = field(default_factory=dict)
    references: dict[str, Any] = field(default_factory=dict)
    reported: set[tuple] = field(default_factory=set)
    ports: dict[tuple, Any] = field(default_factory=dict)  # a --port's process per (port, root, python, model)


_CURRENT: list[FVSession] = [FVSession()]


def current() -> FVSession:
    """This process's session (one per pytest process or xdist worker)."""
    return _CURRENT[0]


def start_session() -> FVSession:
    """A fresh session, made current (at ``pytest_configure``)."""
    _CURRENT[0] = FVSession()
    return _CURRENT[0]


def probe_cache(opts: FVOptions) -> tuple[Any, Any]:
    """The reference family probe's disk cache and the (src root, baukit root, compat) it is keyed by; (None, None)
    with --no-src-cache or where no src is named (``fv.reference.probe_cache``)."""
    from fv.reference import ReferenceUnavailable, find_src_root
    from fv.reference.probe_cache import ProbeCache, default_probe_cache_dir

    if opts.no_src_cache:
        return None, None
    try:
        root = find_src_root(opts.src_root, opts.rootdir)
    except ReferenceUnavailable:
        return None, None
    if not root:
        return None, None
    base = Path(opts.src_cache) / "probes" if opts.src_cache else default_probe_cache_dir()
    return ProbeCache(base), (Path(root).resolve(), opts.baukit_root, opts.src_compat)


def share_cores(n_workers: int) -> None:
    """An xdist worker's share of the cores: ``cores // workers`` torch threads, also in ``OMP_NUM_THREADS`` and
    ``MKL_NUM_THREADS`` so that the processes a test starts (a pytest session, an ``fv`` command, the reference's
    process) keep to it; more threads than cores make OpenMP's waiting threads stall each other. An explicit
    ``OMP_NUM_THREADS`` wins (the golden replay in ``.ci/run`` sets the threads per worker)."""
    if n_workers <= 1 or os.environ.get("OMP_NUM_THREADS"):
        return
    import torch

    threads = max(1, (os.cpu_count() or 1) // n_workers)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def check_reference_side(opts: FVOptions) -> None:
    """Own mode with a reference given: its loader loads each model once in its own process (kept for the session)
    and its indirect-effect hook is probed on the session's first prompt, so a name it cannot run stops the
    session here in one line, and a model it can run on real prompts never does (``fv.reference.probes``)."""
    if opts.src_model != "own" or not (opts.src_root or os.environ.get("FV_SRC_ROOT")) or opts.golden_dir:
        return
    from fv.model.loading import pick_device
    from fv.reference.probes import session_problem

    try:
        ref = get_reference(opts)
    except pytest.fail.Exception as exc:
        raise FVError(str(exc.msg)) from None
    if isinstance(ref, str):
        return
    from fv.reference.memory import memory_plan
    from fv.reference.probes import reference_spec

    for name in opts.models:  # before anything loads: two copies must fit
        fits, text = memory_plan(reference_spec(name)[1], name, pick_device(opts.device), "own")
        if not fits:
            raise FVError(text)
    from fv.reference.probes import session_prompt

    msg = session_problem(ref, opts.models, pick_device(opts.device), load_reference_own,
                          lambda tok: session_prompt(opts.fixed_trials, opts.dataset, tok))
    if msg:
        raise FVError(msg)


def load_reference_own(ref: Any, spec: str, path: Path, device: str) -> Any:
    """The reference's own copy of a model, loaded by its own loader in its own process, once per session."""
    key = ("reference-own", str(ref.src_root), spec, device)
    models = current().models
    if key not in models:
        models[key] = ref.load_own(spec, device=device, fv_path=path)
    return models[key]


def load_session_model(opts: FVOptions, name: str) -> Any:
    """fv's model ``name`` with the session's device, dtype and attention, loaded once per session."""
    from fv.model.loading import load_model

    key = (name, opts.device, opts.dtype, opts.attn)
    models = current().models
    if key not in models:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...: one GPU each when there are several
        wid = int(worker[2:]) if worker[2:].isdigit() else None
        models[key] = load_model(name, opts.device, opts.dtype, wid, attn_implementation=opts.attn,
                                  produced=reference_produced(opts, name, wid))
    return models[key]


def reference_produced(opts: FVOptions, name: str, worker: int | None) -> dict | None:
    """Own mode with a reference given: what its loader produced for ``name`` (read in its process), which fv's
    loading follows first (4-bit, dtype); None otherwise (upstream's table then, docs/loading.md)."""
    if opts.src_model != "own" or opts.golden_dir or not (opts.src_root or os.environ.get("FV_SRC_ROOT")) \
            or opts.dtype not in ("auto", "") or opts.attn not in ("auto", ""):
        return None
    from fv.model.loading import pick_device
    from fv.reference.probes import reference_spec

    ref = get_reference(opts)
    if isinstance(ref, str):
        return None
    spec, path = reference_spec(name)
    try:
        return load_reference_own(ref, spec, path, pick_device(opts.device, worker)).describe
    except FVError:  # its loader refuses this name (GPT-2 outside 'gpt2-xl'): upstream's table; an own-mode test says why
        return None


def reference_own_model(ref: Any, lm: Any) -> Any:
    """The reference's own copy of ``lm``'s model, loaded once per session by its own loader, in a process of its
    own, from the string the user gave (``fv.reference.adapter.user_string``) onto the same device (the end-to-end
    mode)."""
    from fv.reference.adapter import user_string

    return load_reference_own(ref, user_string(lm), lm.path, lm.device)


def get_reference(opts: FVOptions) -> Any:
    """The reference adapter, or the reason it is unavailable (a string)."""
    from fv.reference import Reference, ReferenceUnavailable, find_src_root

    key = f"{opts.src_root}|{opts.baukit_root}|{opts.src_compat}|{opts.src_python}"
    refs = current().references
    if key not in refs:
        try:
            root = find_src_root(opts.src_root, opts.rootdir)
            refs[key] = (Reference(root, opts.baukit_root, compat=opts.src_compat, python=opts.src_python) if root else
                               "reference src/ not found: pass --src-root PATH, set FV_SRC_ROOT, or keep it as ./src")
        except ReferenceUnavailable as exc:
            # asked for by name but unusable: a configuration error, never a quiet fallback to goldens
            refs[key] = exc if (opts.src_root or os.environ.get("FV_SRC_ROOT")) else str(exc)
    ref = refs[key]
    if isinstance(ref, ReferenceUnavailable):
        pytest.fail(f"the reference given with --src-root / FV_SRC_ROOT cannot be used: {ref}", pytrace=False)
    return ref


def session_reference(opts: FVOptions) -> Any:
    """The reference adapter for the preflights, or None where there is none to use (the gates then say why)."""
    try:
        ref = get_reference(opts)
    except pytest.fail.Exception:
        return None
    return None if isinstance(ref, str) else ref


def trials_for(opts: FVOptions, lm: Any, dataset: Path, n_trials: int = 10, n_shots: int = 10, seed: int = 0,
               name: str | None = None) -> Any:
    """Fixed trials made from ``dataset`` with the model's tokenizer, written once per session."""
    from fv.runtime.trials import load_trials, make_icl_trials, save_trials

    stem = name or dataset.stem
    key = (lm.name, str(dataset), n_trials, n_shots, seed, stem)
    made = current().trials
    if key not in made:
        out = opts.out_root / "_trials" / f"fixed_trials_{stem}_t{n_trials}_s{n_shots}_seed{seed}_{lm.name}.json"
        # the upstream reference's rule: the BOS text in the prompts exactly when the tokenizer adds no BOS
        raw = make_icl_trials(dataset, lm.tokenizer, n_trials, n_shots, seed, model_name_for_tokenizer=lm.name,
                              model_prepend_bos=lm.prepend_bos, prepend_bos_token_used=not lm.prepend_bos,
                              dataset_json_label=str(dataset.name))
        save_trials(out, raw)
        made[key] = load_trials(out)
    return made[key]


def fv_params(opts: FVOptions, lm: Any) -> Any:
    """The stage parameters for the loaded model ``lm`` (its default edit layer unless ``--edit-layer``)."""
    from fv.parity.stages import Params

    return Params(n_top_heads=opts.n_top_heads, edit_layer=opts.edit_layer_for(lm.path, lm.info.n_layers), max_trials=opts.max_trials,
                  mode=opts.mode)


def cached_source(opts: FVOptions, source: Any) -> Any:
    """The live source with its values kept in the src-values cache, unless --no-src-cache."""
    from fv.parity.src_cache import SrcCache, default_cache_dir

    if not opts.no_src_cache:
        source.cache = SrcCache(Path(opts.src_cache) if opts.src_cache else default_cache_dir())
    return source


def port_for(opts: FVOptions, lm: Any) -> Any:
    """The port given with ``--port`` as fv's side (``fv.ports.functions``), its process started once per session and
    model; None without ``--port`` (fv's runtime is the side)."""
    if not opts.port:
        return None
    from fv.ports.functions import PortProcess, PortSide

    procs = current().ports
    key = (opts.port, opts.port_root, opts.port_python, lm.name)
    if key not in procs:
        procs[key] = PortProcess(opts.port, opts.port_root or ".", opts.port_python)
    from fv.reference.adapter import user_string

    return PortSide(procs[key], user_string(lm), str(lm.device), str(lm.dtype).replace("torch.", ""),
                    isolated=not opts.port_chain, exact=opts.port_exact)


def port_files_for(opts: FVOptions, lm: Any, folder: Path, reader: Any) -> tuple[Any, Any]:
    """A ``--port-artifacts`` run folder's side and the trials it ran (``reader.fixed_trials``, written once under
    ``<fv-out>/_trials/`` and loaded through fv's trials door), made once per session and model."""
    import hashlib

    from fv.io import write_json
    from fv.runtime.trials import load_trials

    made = current().trials
    key = ("port-files", lm.name, str(Path(folder).resolve()), reader.NAME, opts.relation_csv)
    if key not in made:
        try:
            raw = reader.fixed_trials(folder, lm.tokenizer, opts.relation_csv)
        except FVError as exc:
            made[key] = exc
        else:
            tag = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:12]
            path = opts.out_root / "_trials" / f"port_{reader.NAME}_{Path(folder).parent.name}_{Path(folder).name}_{tag}_{lm.name}.json"
            write_json(path, raw)
            made[key] = (reader.side(folder), load_trials(path))
    got = made[key]
    if isinstance(got, FVError):
        pytest.fail(f"--port-artifacts {folder}: {got}", pytrace=False)
    return got


def universal_side(opts: FVOptions, lm: Any) -> Any:
    """The universal gate's other side, chosen by ``fv.parity.sides.other_side`` as the stage gates' is: the live
    reference when there is one, else the snapshot goldens (a user's goldens hold no universal values)."""
    from fv.parity.sides import other_side
    from fv.reference.stages import live_source

    ref = get_reference(opts)
    if isinstance(ref, str):
        if opts.require_src:
            pytest.fail(ref, pytrace=False)
        ref = None
    source = live_source(ref, reference_own_model(ref, lm) if opts.src_model == "own" else None) if ref is not None else None
    return other_side(lm, source)


def parity_for(opts: FVOptions, lm: Any, trials: Any, require_reference: bool = False, ours: Any = None) -> Any:
    """The parity run for (model, trials, parameters), computed once per session. The other side is chosen once,
    by ``fv.parity.sides.other_side``: a user's goldens (``--golden-dir``), else the live reference when there is
    one, else the snapshot goldens; the run's report records which. Our side: ``ours`` when given (a port's files,
    ``port_files_for``), else the ``--port`` (``port_for``), else fv's runtime."""
    from fv.parity.run import default_out_dir, run_parity
    from fv.parity.sides import other_side
    from fv.reference.stages import STAGE_FUNCTIONS, live_source

    golden = None
    if opts.golden_dir:  # the user's goldens are the other side, even where the reference is present
        from dataclasses import replace

        from fv.parity.user_goldens import golden_source

        try:
            golden = golden_source(opts.golden_dir, lm, trials)
        except FVError as exc:
            pytest.fail(str(exc), pytrace=False)
    ref = get_reference(opts) if golden is None else None
    if isinstance(ref, str):
        if opts.require_src:
            pytest.fail(ref, pytrace=False)
        if require_reference:
            pytest.skip(ref)
        ref = None
    params = fv_params(opts, lm) if golden is None else replace(fv_params(opts, lm), max_trials=golden.n_trials)
    if ours is not None:  # a port's files: its numbers average all the trials it ran, so every one is compared
        from dataclasses import replace

        params = replace(params, max_trials=None)
    key = (lm.name, str(trials.path), trials.sha256, tuple(sorted(params.as_dict().items())), ref is not None, opts.src_model,
           opts.golden_dir, opts.port, opts.port_chain, opts.port_exact,
           None if ours is None else str(getattr(ours, "folder", "") or id(ours)))
    runs, reported = current().parity, current().reported
    if key not in runs:
        try:
            lm.info.check_edit_layer(params.edit_layer)
            source = None
            if ref is not None:
                source = live_source(ref, reference_own_model(ref, lm) if opts.src_model == "own" else None)
                source = cached_source(opts, source)
            runs[key] = run_parity(lm, trials, params, None, default_out_dir(opts.out_root, trials, lm.name),
                                   stage_functions=STAGE_FUNCTIONS, other=other_side(lm, source, golden),
                                   ours=ours if ours is not None else port_for(opts, lm))
        except FileNotFoundError as exc:
            runs[key] = (f"{EMPTY_GATE} {lm.name} x {trials.id}: no reference and {exc}. Pass --src-root PATH (the "
                         f"reference's src/) to compare live, or make goldens with `pytest -m m1 --snapshot-update --src-root PATH`")
        except FVError as exc:
            runs[key] = exc
        except Exception as exc:  # computed once: every test of this run reports it without recomputing
            runs[key] = RuntimeError(f"the parity run failed: {type(exc).__name__}: {exc}")
            runs[key].__cause__ = exc
    run = runs[key]
    if isinstance(run, str):
        pytest.skip(run)
    if isinstance(run, FVError):
        if key in reported:  # one failure per (model, trials) tells it; the other tests say where to look
            pytest.skip(f"{SAME_FAILURE} {lm.name} x {trials.id}: {run}")
        reported.add(key)
        pytest.fail(str(run), pytrace=False)
    if isinstance(run, Exception):
        raise run
    return run
