"""The fv pytest plugin: options, markers and session fixtures for the M0-M7 gates.

Registered through the ``pytest11`` entry point, so ``--fv-model``, ``--src-root`` and friends work from any
rootdir. Models load once per session (or xdist worker); parity runs are computed once per (model, trials,
parameters) and shared by every test that asks. Without ``--fv-model`` the suite runs on both tiny models.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fv.errors import FVError

MARKERS = {
    "m0": "M0: fixed trials, prompt and slot parity", "m1": "M1: golden artifacts from the reference",
    "m2": "M2: the stage-by-stage parity gate", "m3": "M3: the reference dump", "m4": "M4: the fv runtime artifacts",
    "m5": "M5: the stage diff", "m6": "M6: no divergence between fresh runs", "m7": "M7: relation q-wise transfer",
    "universal": "the universal FV (fv universal): per-task indirect effects, AIE, filter, FV vs the reference",
    "tiny": "runs on an embedded tiny model", "gpu": "needs a CUDA device", "src": "needs the reference src/",
    "slow": "takes more than a few seconds",
    "first_pair": "runs once, on the first model and the first trials set (the others are deselected, not skipped)",
    "first_tiny": "without --fv-model, runs on the first default tiny model only (the others are deselected, not "
                  "skipped); on the models --fv-model names, on each",
    "self": "fv checking itself on its own tiny models (every test under tests/self/); deselected when the session "
            "names a user's inputs, unless --fv-self-tests or -m self",
}
# options that name a user's inputs: with any of them the session runs the gates on those inputs only
USER_INPUT_OPTIONS = ("--fv-model", "--fixed-trials", "--relation-csv", "--golden-dir", "--dataset")
TINY_DEFAULT = ("tiny-llama", "tiny-llama3tok")


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("fv", "function-vector parity suite")
    g.addoption("--fv-model", default=None, help="local model folder or tiny model name; comma-separated for several (default: both tiny models)")
    g.addoption("--fv-device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    g.addoption("--fv-dtype", default="auto",
                help="float32, bfloat16, float16 or auto (default auto: the dtype the reference's loader gives the model; docs/loading.md)")
    g.addoption("--fv-attn-implementation", default="auto",
                help="eager, sdpa, ... or auto (default auto: the transformers default, as the reference's loader)")
    g.addoption("--src-model", default="own", choices=("own", "shared"),
                help="own (default): the reference loads its own copy of the model with its own loader, from the same "
                     "folder, and the gate compares the two pipelines as users run them; shared: the reference's functions "
                     "are handed fv's model object (one copy in memory, for models too large for two)")
    g.addoption("--fv-mode", default="exact", choices=("exact", "fast"), help="fv runtime mode compared with the reference")
    g.addoption("--src-root", default=None, help="the reference's src/ (else $FV_SRC_ROOT, else ./src)")
    g.addoption("--baukit-root", default=None, help="folder holding baukit/nethook.py when baukit does not import (else $FV_BAUKIT_ROOT)")
    g.addoption("--src-compat", action="store_true", help="apply the reference's FV addition to tensor layer outputs (a silent no-op on transformers 5.x otherwise); recorded in reports")
    g.addoption("--require-src", action="store_true", help="fail, instead of skip, when the reference is missing")
    g.addoption("--fixed-trials", default=None, help="a fixed-trials JSON to test (default: trials made from fixtures/antonym_tiny.json and fixtures/data/antonym.json)")
    g.addoption("--dataset", default=None, help="an ICL dataset JSON to make fixed trials from (10 trials, 10 shots, seed 0)")
    g.addoption("--n-top-heads", type=int, default=10, help="heads in the FV (default 10)")
    g.addoption("--edit-layer", type=int, default=9, help="layer the FV is added after (default 9)")
    g.addoption("--max-trials", type=int, default=5, help="trials compared per file (default 5)")
    g.addoption("--q-list", default=None, help="M7: comma-separated q ids, or 'all'")
    g.addoption("--relation-csv", default=None, help="M7: relation CSV (default fixtures/relation_tiny.csv; the real fixtures/data/relationA_ex.csv is a good next step)")
    g.addoption("--n-trials-per-q", type=int, default=3, help="M7: trials per q (default 3)")
    g.addoption("--fv-out", default=None, help="where reports go (default results_fv/ under the directory pytest runs in)")
    g.addoption("--golden-dir", default=None,
                help="M1/M2: a user's golden folder as src wrote it (results/<dataset>/<fixed_trials_id>/ with "
                     "<dataset>_mean_head_activations_FIXED.pt, _dummy_labels.json, _indirect_effect.pt); fv is compared "
                     "with it within its dtype's tolerance, on the --fixed-trials it was made from")
    g.addoption("--src-cache", default=None, help="folder for the live reference's cached stage values (default $FV_CACHE_DIR/src_values) and, in "
                                                  "its probes/, its family probes: a rerun then computes only fv's side")
    g.addoption("--no-src-cache", action="store_true", help="compute the live reference's side and probe its families every run; neither read nor write its cache")
    g.addoption("--fv-self-tests", action="store_true",
                help="also run fv's own tests (tests/self/: families, forks, fast-vs-exact, fuzzing, locks, docs...) when "
                     "the session names a user's inputs (--fv-model, --fixed-trials, --relation-csv, --golden-dir, "
                     "--dataset); without it only the gates on those inputs are collected (same as -m self for them alone)")
    g.addoption("--allow-empty", action="store_true",
                help="let a gate pass that compared nothing for a (model, trials) pair (no reference and no goldens); "
                     "without it such a session fails")


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    # Goldens live in one folder per model and trials, not beside the test module; syrupy warns that it cannot
    # relate such paths to a test, which is the design here, not a problem.
    config.addinivalue_line("filterwarnings", r"ignore:\s*Can not relate snapshot:UserWarning")
    warnings.filterwarnings("ignore", message="Can not relate snapshot", category=UserWarning)
    if not hasattr(config, "workerinput"):  # xdist workers inherit options the controller already checked
        try:
            opts = FVOptions.of(config)
            check_options(opts)
            from fv.parity.preflight import (
                session_preflight,  # one line per refusal, exit code 4 (docs/preflight.md)
                session_shots,
            )
            from fv.reference.capability import session_probe

            for warning in session_preflight(opts, session_probe(lambda: session_reference(opts), opts.src_model,
                                                                 *probe_cache(opts), n_shots=session_shots(opts))):
                sys.stderr.write(f"fv: warning: {warning.text()}\n")
            if not config.option.collectonly:  # a session that runs no stage loads no model in the reference's process
                check_reference_side(opts)  # then the reference's own process: its loader and hook on each model
        except FVError as exc:
            raise pytest.UsageError(f"fv: {exc}") from None
    else:
        share_cores(int(config.workerinput.get("workercount", 0) or os.environ.get("PYTEST_XDIST_WORKER_COUNT", 0) or 0))
    config._fv_gate = GateLedger()  # type: ignore[attr-defined]


def probe_cache(opts: "FVOptions") -> tuple[Any, Any]:
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


def check_options(opts: "FVOptions") -> None:
    """Every option that can be checked without a model pass, once, at the session's start: a wrong one stops
    the session with one line instead of failing each test that uses it."""
    import json as _json

    from fv.model.resolve import resolve_model_path
    from fv.model.tiny import TINY_MODELS
    from fv.reference import ReferenceUnavailable, find_src_root
    from fv.runtime.trials import load_trials

    for name in opts.models:
        if name in TINY_MODELS:
            n_layers = TINY_MODELS[name].n_layers
        else:
            cfg = _json.loads((resolve_model_path(name) / "config.json").read_text())
            cfg = cfg.get("text_config", cfg)
            n_layers = cfg.get("num_hidden_layers", cfg.get("n_layer"))
        if isinstance(n_layers, int) and not 0 <= opts.edit_layer < n_layers:
            raise FVError(f"--edit-layer {opts.edit_layer} is outside {name}: it has {n_layers} layers (0..{n_layers - 1}).")
    relation_file = False
    if opts.fixed_trials:
        relation_file = any(t.q_id is not None for t in load_trials(opts.fixed_trials).trials)
    if opts.golden_dir:
        from fv.parity.user_goldens import load_user_goldens

        if not opts.fixed_trials:
            raise FVError(f"--golden-dir {opts.golden_dir} needs --fixed-trials FILE: the trials src made those goldens from.")
        load_user_goldens(opts.golden_dir)
        from fv.parity.user_goldens import check_identity_at_start

        for name in opts.models:  # goldens of another model (or other trials) stop the session here, in one line
            check_identity_at_start(opts.golden_dir, name, load_trials(opts.fixed_trials))
    if opts.dataset and not Path(opts.dataset).is_file():
        raise FVError(f"--dataset {opts.dataset} not found. Give an ICL dataset JSON.")
    if opts.src_root or os.environ.get("FV_SRC_ROOT"):
        try:
            find_src_root(opts.src_root)
        except ReferenceUnavailable as exc:
            raise FVError(str(exc)) from None
    if opts.relation_csv or (opts.q_list and not relation_file):
        from fv.runtime.datasets import load_relation_csv

        csv = Path(opts.relation_csv) if opts.relation_csv else default_relation_csv()
        groups = load_relation_csv(csv)
        if opts.q_list not in (None, "", "all"):
            wanted = [q.strip() for q in opts.q_list.split(",") if q.strip()]
            missing = [q for q in wanted if q not in groups]
            if missing:
                raise FVError(f"--q-list names {missing}, which {csv} does not have; it has {sorted(groups)}.")
    if opts.max_trials < 1:
        raise FVError(f"--max-trials must be at least 1; found {opts.max_trials}.")


def check_reference_side(opts: "FVOptions") -> None:
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

    msg = session_problem(ref, opts.models, pick_device(opts.device), _load_reference_own,
                          lambda tok: session_prompt(opts.fixed_trials, opts.dataset, tok))
    if msg:
        raise FVError(msg)


def _load_reference_own(ref: Any, spec: str, path: Path, device: str) -> Any:
    key = ("reference-own", str(ref.src_root), spec, device)
    if key not in _MODELS:
        _MODELS[key] = ref.load_own(spec, device=device, fv_path=path)
    return _MODELS[key]


def default_relation_csv() -> Path:
    from fv.paths import FIXTURES

    return FIXTURES / "relation_tiny.csv"


@dataclass
class FVOptions:
    models: list[str]
    device: str
    dtype: str
    mode: str
    src_root: str | None
    baukit_root: str | None
    src_compat: bool
    require_src: bool
    fixed_trials: str | None
    dataset: str | None
    n_top_heads: int
    edit_layer: int
    max_trials: int
    q_list: str | None
    relation_csv: str | None
    n_trials_per_q: int
    out_root: Path
    rootdir: Path
    allow_empty: bool = False
    attn: str = "auto"
    src_model: str = "own"
    golden_dir: str | None = None
    src_cache: str | None = None
    no_src_cache: bool = False

    @classmethod
    def of(cls, config: pytest.Config) -> "FVOptions":
        o = config.getoption
        models = [m.strip() for m in (o("--fv-model") or ",".join(TINY_DEFAULT)).split(",") if m.strip()]
        # Paths given as option values (``--src-root /x/src``) take part in pytest's rootdir guess, so the
        # rootdir can land outside the project: fixtures are found beside the fv package instead, and
        # reports go under the directory pytest was invoked from.
        from fv.paths import REPO_ROOT

        root = REPO_ROOT if (REPO_ROOT / "fixtures").is_dir() else Path(config.rootpath)
        invoked = Path(config.invocation_params.dir)
        return cls(models, o("--fv-device"), o("--fv-dtype"), o("--fv-mode"), o("--src-root"), o("--baukit-root"),
                   o("--src-compat"), o("--require-src"), o("--fixed-trials"), o("--dataset"), o("--n-top-heads"),
                   o("--edit-layer"), o("--max-trials"), o("--q-list"), o("--relation-csv"), o("--n-trials-per-q"),
                   Path(o("--fv-out")) if o("--fv-out") else invoked / "results_fv", root, o("--allow-empty"),
                   o("--fv-attn-implementation"), o("--src-model"), o("--golden-dir"), o("--src-cache"), o("--no-src-cache"))


def trial_sets(opts: FVOptions) -> list[str]:
    """Names of the fixed-trials sets M1/M2 run on."""
    if opts.fixed_trials:
        return ["custom"]
    if opts.dataset:
        return ["dataset"]
    return ["antonym_tiny", "antonym"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    opts = FVOptions.of(metafunc.config)
    if "fv_model_name" in metafunc.fixturenames:
        metafunc.parametrize("fv_model_name", opts.models, scope="session")
    if "trials_set" in metafunc.fixturenames:
        metafunc.parametrize("trials_set", trial_sets(opts), scope="session")
    if "trial_index" in metafunc.fixturenames:
        metafunc.parametrize("trial_index", range(opts.max_trials), ids=lambda i: f"trial{i}")


def is_self_test(item: pytest.Item) -> bool:
    """fv's own test: under a ``tests/self/`` folder, or marked ``self``."""
    parts = Path(str(item.path)).parent.parts
    return bool(item.get_closest_marker("self")) or any(a == "tests" and b == "self" for a, b in zip(parts, parts[1:]))


def user_inputs_named(config: pytest.Config) -> list[str]:
    """The options of ``USER_INPUT_OPTIONS`` this session gives."""
    return [name for name in USER_INPUT_OPTIONS if config.getoption(name)]


def self_tests_wanted(config: pytest.Config) -> bool:
    """Self-tests run in the default session, with --fv-self-tests, or when -m names the ``self`` marker."""
    import re

    return (not user_inputs_named(config) or config.getoption("--fv-self-tests")
            or bool(re.search(r"(?<![\w-])self(?![\w-])", config.getoption("markexpr") or "")))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from fv.model.tiny import TINY_MODELS

    opts = FVOptions.of(config)
    first = {"fv_model_name": opts.models[0], "trials_set": trial_sets(opts)[0]}
    wanted = self_tests_wanted(config)
    keep, drop, own = [], [], []
    for item in items:
        if is_self_test(item):
            item.add_marker(pytest.mark.self)
            if not wanted:
                own.append(item)
                continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        off = item.get_closest_marker("first_pair") and any(params.get(k, v) != v for k, v in first.items())
        off = off or (item.get_closest_marker("first_tiny") and not config.getoption("--fv-model")
                      and params.get("fv_model_name", first["fv_model_name"]) != first["fv_model_name"])
        (drop if off else keep).append(item)
    if drop or own:
        config.hook.pytest_deselected(items=drop + own)
        items[:] = keep
    config._fv_self_deselected = len(own)  # type: ignore[attr-defined]
    if hasattr(config, "workerinput"):  # told once by the controller (pytest_testnodedown)
        config.workeroutput["fv_self_deselected"] = len(own)  # type: ignore[attr-defined]
    for item in items:
        cs = getattr(item, "callspec", None)
        name = cs.params.get("fv_model_name") if cs else None
        if name in TINY_MODELS:
            item.add_marker(pytest.mark.tiny)
        if "reference" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.src)
        if config.getoption("--fv-device").startswith("cuda"):
            item.add_marker(pytest.mark.gpu)


# ---- session state shared by fixtures (one per process / xdist worker) -----------------------------------
_MODELS: dict[tuple, Any] = {}
_TRIALS: dict[tuple, Any] = {}
_PARITY: dict[tuple, Any] = {}
_REFERENCE: dict[str, Any] = {}
_REPORTED: set[tuple] = set()
SAME_FAILURE = "[fv: failed once above]"


@pytest.fixture(scope="session")
def fv_options(pytestconfig: pytest.Config) -> FVOptions:
    return FVOptions.of(pytestconfig)


@pytest.fixture(scope="session")
def fixture_data() -> Path:
    """``fixtures/data``: the reference's datasets and real user files the suite ships (see its README.md)."""
    from fv.paths import FIXTURES

    return FIXTURES / "data"


def load_session_model(opts: FVOptions, name: str) -> Any:
    from fv.model.loading import load_model

    key = (name, opts.device, opts.dtype, opts.attn)
    if key not in _MODELS:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...: one GPU each when there are several
        wid = int(worker[2:]) if worker[2:].isdigit() else None
        _MODELS[key] = load_model(name, opts.device, opts.dtype, wid, attn_implementation=opts.attn,
                                  produced=reference_produced(opts, name, wid))
    return _MODELS[key]


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
        return _load_reference_own(ref, spec, path, pick_device(opts.device, worker)).describe
    except FVError:  # its loader refuses this name (GPT-2 outside 'gpt2-xl'): upstream's table; an own-mode test says why
        return None


def reference_own_model(ref: Any, lm: Any) -> Any:
    """The reference's own copy of ``lm``'s model, loaded once per session by its own loader, in a process of its
    own, from the string the user gave (``fv.reference.adapter.user_string``) onto the same device (the end-to-end
    mode)."""
    from fv.reference.adapter import user_string

    return _load_reference_own(ref, user_string(lm), lm.path, lm.device)


@pytest.fixture(scope="session")
def fv_model(fv_options: FVOptions, fv_model_name: str) -> Any:
    """The model under test, loaded once per session or worker (GPU when there is one)."""
    try:
        return load_session_model(fv_options, fv_model_name)
    except FVError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def tokenizer(fv_model: Any) -> Any:
    return fv_model.tokenizer


def get_reference(opts: FVOptions) -> Any:
    """The reference adapter, or the reason it is unavailable (a string)."""
    from fv.reference import Reference, ReferenceUnavailable, find_src_root

    key = f"{opts.src_root}|{opts.baukit_root}|{opts.src_compat}"
    if key not in _REFERENCE:
        try:
            root = find_src_root(opts.src_root, opts.rootdir)
            _REFERENCE[key] = (Reference(root, opts.baukit_root, compat=opts.src_compat) if root else
                               "reference src/ not found: pass --src-root PATH, set FV_SRC_ROOT, or keep it as ./src")
        except ReferenceUnavailable as exc:
            # asked for by name but unusable: a configuration error, never a quiet fallback to goldens
            _REFERENCE[key] = exc if (opts.src_root or os.environ.get("FV_SRC_ROOT")) else str(exc)
    ref = _REFERENCE[key]
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


@pytest.fixture(scope="session")
def reference(fv_options: FVOptions) -> Any:
    """The reference adapter; skips with one clear reason without it (fails with --require-src)."""
    ref = get_reference(fv_options)
    if isinstance(ref, str):
        if fv_options.require_src:
            pytest.fail(ref, pytrace=False)
        pytest.skip(ref)
    return ref


def trials_for(opts: FVOptions, lm: Any, dataset: Path, n_trials: int = 10, n_shots: int = 10, seed: int = 0,
               name: str | None = None) -> Any:
    """Fixed trials made from ``dataset`` with the model's tokenizer, written once per session."""
    from fv.runtime.trials import load_trials, make_icl_trials, save_trials

    stem = name or dataset.stem
    key = (lm.name, str(dataset), n_trials, n_shots, seed, stem)
    if key not in _TRIALS:
        out = opts.out_root / "_trials" / f"fixed_trials_{stem}_t{n_trials}_s{n_shots}_seed{seed}_{lm.name}.json"
        # the upstream reference's rule: the BOS text in the prompts exactly when the tokenizer adds no BOS
        raw = make_icl_trials(dataset, lm.tokenizer, n_trials, n_shots, seed, model_name_for_tokenizer=lm.name,
                              model_prepend_bos=lm.prepend_bos, prepend_bos_token_used=not lm.prepend_bos,
                              dataset_json_label=str(dataset.name))
        save_trials(out, raw)
        _TRIALS[key] = load_trials(out)
    return _TRIALS[key]


@pytest.fixture(scope="session")
def fixed_trials(fv_options: FVOptions, fv_model: Any, trials_set: str) -> Any:
    from fv.paths import FIXTURES
    from fv.runtime.trials import load_trials

    if trials_set == "custom":
        try:
            return load_trials(fv_options.fixed_trials)
        except FVError as exc:
            pytest.fail(str(exc), pytrace=False)
    if trials_set == "dataset":
        return trials_for(fv_options, fv_model, Path(fv_options.dataset))
    if trials_set == "antonym_tiny":
        return trials_for(fv_options, fv_model, FIXTURES / "antonym_tiny.json")
    return trials_for(fv_options, fv_model, FIXTURES / "data" / "antonym.json")


def fv_params(opts: FVOptions) -> Any:
    from fv.parity.stages import Params

    return Params(n_top_heads=opts.n_top_heads, edit_layer=opts.edit_layer, max_trials=opts.max_trials, mode=opts.mode)


def cached_source(opts: FVOptions, source: Any) -> Any:
    """The live source with its values kept in the src-values cache, unless --no-src-cache."""
    from fv.parity.src_cache import SrcCache, default_cache_dir

    if not opts.no_src_cache:
        source.cache = SrcCache(Path(opts.src_cache) if opts.src_cache else default_cache_dir())
    return source


def parity_for(opts: FVOptions, lm: Any, trials: Any, require_reference: bool = False) -> Any:
    """The cached parity run for (model, trials, parameters): live reference when present, else goldens."""
    from fv.parity.run import default_out_dir, run_parity
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
    params = fv_params(opts) if golden is None else replace(fv_params(opts), max_trials=golden.n_trials)
    key = (lm.name, str(trials.path), trials.sha256, tuple(sorted(params.as_dict().items())), ref is not None, opts.src_model,
           opts.golden_dir)
    if key not in _PARITY:
        try:
            lm.info.check_edit_layer(params.edit_layer)
            source = None
            if ref is not None:
                source = live_source(ref, reference_own_model(ref, lm) if opts.src_model == "own" else None)
                source = cached_source(opts, source)
            _PARITY[key] = run_parity(lm, trials, params, source,
                                      default_out_dir(opts.out_root, trials), stage_functions=STAGE_FUNCTIONS, golden=golden)
        except FileNotFoundError as exc:
            _PARITY[key] = (f"{EMPTY_GATE} {lm.name} x {trials.id}: no reference and {exc}. Pass --src-root PATH (the "
                            f"reference's src/) to compare live, or make goldens with `pytest -m m1 --snapshot-update --src-root PATH`")
        except FVError as exc:
            _PARITY[key] = exc
        except Exception as exc:  # computed once: every test of this run reports it without recomputing
            _PARITY[key] = RuntimeError(f"the parity run failed: {type(exc).__name__}: {exc}")
            _PARITY[key].__cause__ = exc
    run = _PARITY[key]
    if isinstance(run, str):
        pytest.skip(run)
    if isinstance(run, FVError):
        if key in _REPORTED:  # one failure per (model, trials) tells it; the other tests say where to look
            pytest.skip(f"{SAME_FAILURE} {lm.name} x {trials.id}: {run}")
        _REPORTED.add(key)
        pytest.fail(str(run), pytrace=False)
    if isinstance(run, Exception):
        raise run
    return run


def _check_shape(run: Any, artifact: str, value: Any) -> None:
    info, n_slots = run.lm.info, len(run.fv.values["slot"]["dummy_labels"])
    if artifact == "mean_activations":
        assert value.ndim == 4 and tuple(value.shape) == (info.n_layers, info.n_heads, n_slots, info.head_dim)
    elif artifact == "indirect_effect":
        assert value.ndim == 3 and tuple(value.shape) == (len(run.trial_keys), info.n_layers, info.n_heads)
    elif artifact == "dummy_labels":
        assert [p for p, _ in value] == list(range(n_slots))
        assert value[-1][1] == "query_predictive_token"
    elif artifact == "fv":
        assert tuple(value.shape) == (info.d_model,)


def assert_golden(run: Any, artifact: str, snapshot: Any, update: bool) -> None:
    """One golden artifact of a parity run: with ``--snapshot-update`` written from the live reference's value
    (never fv's), otherwise fv's value compared with it within the dtype's tolerance."""
    from fv.io import write_json
    from fv.parity.golden import GOLDEN_ARTIFACTS, artifact_value, golden_dir
    from fv.parity.snapshot import golden_extension
    from fv.parity.tolerance import EXACT, tolerance_for
    from fv.parity.user_goldens import USER_GOLDENS, artifact_problems, imported_from
    from fv.paths import SNAPSHOT_ROOT

    if run.source == USER_GOLDENS:  # --golden-dir: the user's files, not the snapshots
        if update:
            pytest.fail("--snapshot-update writes goldens from the live reference; drop --golden-dir (or make snapshots of "
                        "a user's goldens with `fv golden import`).", pytrace=False)
        problems = artifact_problems(run, artifact)
        if problems is None:
            pytest.skip(f"{run.other_side} hold no {artifact} (src writes mean activations, dummy labels, indirect effects)")
        assert not problems, f"{artifact} differs from {run.other_side}:\n" + "\n".join(problems)
        return
    folder = golden_dir(SNAPSHOT_ROOT, run.lm.name, run.trials.id, len(run.trial_keys))
    kind = GOLDEN_ARTIFACTS[artifact][0]
    # an update writes the reference's value unless it is bit-identical to the golden, so a golden and its meta
    # always describe the same run; a comparison allows the dtype's tolerance
    stage = GOLDEN_ARTIFACTS[artifact][1]
    ext = golden_extension(folder, kind, EXACT if update else tolerance_for(run.lm.dtype, exact=False).for_stage(stage), stage)
    if update:
        if run.source != "reference":
            pytest.fail("refusing to write goldens without the reference: goldens are the reference's numbers. "
                        "Pass --src-root <reference src>.", pytrace=False)
        from fv.parity.golden import numerics
        from fv.parity.identity import golden_identity

        # the model's and trials' identity: replaying these goldens on another model is refused (fv.parity.identity)
        identity = {**golden_identity(run.lm, run.trials, run.trials.subset(run.params.max_trials)),
                    "recorded_by": "written with the goldens by pytest --snapshot-update"}
        write_json(folder.parent / f"{folder.name}.meta.json", {**run.result.meta, "notes": run.result.meta["src_notes"],
                                                                "identity": identity, "numerics": numerics(),
                                                                "replay_tolerance": tolerance_for(run.lm.dtype, exact=False).__dict__})
        value = artifact_value(run.src, artifact)
        _check_shape(run, artifact, value)
        assert value == snapshot.use_extension(ext)(name=artifact)
        return
    value = artifact_value(run.fv, artifact)
    _check_shape(run, artifact, value)
    if folder.is_dir() and run.source != "golden":  # (the engine checked the goldens it replayed) goldens of another
        from fv.parity.golden import check_identity  # model are refused here too, even beside a live reference

        try:
            check_identity(folder, run.lm, run.trials, run.trials.subset(run.params.max_trials))
        except FVError as exc:
            pytest.fail(str(exc), pytrace=False)
    if not (folder / f"{artifact}.{ext._file_extension}").is_file() and imported_from(folder):
        pytest.skip(f"{folder} holds goldens imported from {imported_from(folder)}, which have no {artifact}")
    if not (folder / f"{artifact}.{ext._file_extension}").is_file() and run.source == "reference":
        # the live reference was the other side and its stages were compared (M2/M7): a model or trials without
        # goldens (a user's) is compared live, and nothing demands a golden
        pytest.skip(f"{NO_GOLDEN} {run.lm.name} x {run.trials.id}: no golden {artifact} in {folder}; compared live with the reference")
    assert (folder / f"{artifact}.{ext._file_extension}").is_file(), f"golden {artifact} missing in {folder}"
    assert value == snapshot.use_extension(ext)(name=artifact)


@pytest.fixture
def parity_run(fv_options: FVOptions, fv_model: Any, fixed_trials: Any) -> Any:
    return parity_for(fv_options, fv_model, fixed_trials)


# ---- what the gates compared, told in the terminal (works under xdist: reports carry it to the controller) --
EMPTY_GATE = "[fv: nothing to compare]"
NO_GOLDEN = "[fv: no golden, compared live]"
_NEEDS = ((NO_GOLDEN, "golden checks found no golden and were compared live with the reference instead"), ("reference src/ not found", "need the reference (pass --src-root PATH)"), ("GPU", "need a GPU"),
          ("skipped by the trials rule", "are qs with too few rows for the trials rule"),
          (SAME_FAILURE, "share a failure reported once above"))


@dataclass
class GateLedger:
    """Collected on the process that prints: every (model, trials) pair a gate compared, with its stage table,
    every pair it could not compare, and why tests were skipped."""

    runs: dict = field(default_factory=dict)
    empty: dict = field(default_factory=dict)
    skips: dict = field(default_factory=dict)


def _parity_summary(run: Any) -> dict:
    """The part of a parity run the terminal table shows, as plain data (it crosses process boundaries)."""
    fd = run.result.first_divergence()
    return {
        "model": run.lm.name, "trials": run.trials.id, "status": run.result.status, "other_side": run.other_side,
        "mode": run.result.meta.get("src_model_mode", ""),
        "tolerance": run.tolerance.name, "sides": dict(getattr(run, "sides", {}) or {}),
        "fv_side": f"{str(run.lm.dtype).replace('torch.', '')}, {run.lm.attn_implementation or '?'} attention",
        "first_divergence": fd and {k: str(v)[:200] for k, v in fd.items() if k in ("stage", "file", "key", "trial_id", "trial_idx", "pattern")},
        "reports": str(next(iter(run.report_paths.values())).parent) if run.report_paths else "",
        "stages": [[s.name, s.status, s.mismatch_count, repr(s.max_abs_diff), round(s.duration_sec, 2), _stage_note(s)]
                   for s in run.result.stages],
        "proves_little": getattr(run.result, "proves_little", None),
    }


def _stage_note(s: Any) -> str:
    """What the table says after a stage's row: where a NONFINITE stage first holds a NaN or an infinity, and
    why a PASS proves little (degenerate); for indirect effects, how large the largest one is."""
    if getattr(s, "nonfinite", None):
        nf = s.nonfinite
        first = nf.get("fv") or nf.get("reference") or {}
        return f"{first.get('value', 'non-finite')} on {nf['side']} side{'s' if nf['side'] == 'both' else ''}, first at {nf['where']}"
    parts = []
    if getattr(s, "degenerate", None) and s.status == "PASS":
        parts.append(f"(degenerate: {s.degenerate})")
    mag = getattr(s, "magnitude", None) or {}
    if s.name == "indirect_effect" and "max_abs" in mag and not parts:
        ratio = mag.get("max_abs_over_rounding_step")
        parts.append(f"largest |effect| {mag['max_abs']:.3g}" + (f" ({ratio:.3g} x eps x p)" if ratio is not None else ""))
    return "; ".join(parts)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" and not (report.when == "setup" and report.skipped):
        return
    from fv.parity.run import ParityRun

    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, ParityRun):
            report.user_properties.append(("fv_parity", _parity_summary(value)))
            break


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    ledger = getattr(_CONFIG.get("config"), "_fv_gate", None)
    if ledger is None:
        return
    for name, value in report.user_properties:
        if name == "fv_parity":
            ledger.runs[(value["model"], value["trials"], value.get("mode", ""))] = value
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        if reason.startswith(EMPTY_GATE):
            ledger.empty[reason] = ledger.empty.get(reason, 0) + 1
        else:
            label = next((why for needle, why in _NEEDS if needle in reason), reason)
            ledger.skips[label] = ledger.skips.get(label, 0) + 1


_CONFIG: dict[str, Any] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    _CONFIG["config"] = session.config


@pytest.hookimpl(hookwrapper=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> Any:
    ledger = getattr(session.config, "_fv_gate", None)
    if ledger is not None and ledger.empty and not hasattr(session.config, "workerinput") \
            and not session.config.getoption("--allow-empty") and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    yield


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist: each worker collects the same items; keep the count of fv's own tests it deselected."""
    n = getattr(node, "workeroutput", {}).get("fv_self_deselected")
    if n is not None:
        node.config._fv_self_deselected = n


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    ledger = getattr(config, "_fv_gate", None)
    if ledger is None or hasattr(config, "workerinput"):
        return
    tr = terminalreporter
    n_self = getattr(config, "_fv_self_deselected", 0)
    if n_self:
        tr.write_line(f"fv: {n_self} self-tests deselected (fv checking itself on its own tiny models, tests/self/): "
                      f"this session names your inputs ({', '.join(user_inputs_named(config))}), so only the gates on "
                      f"them ran; run fv's own tests with --fv-self-tests or -m self")
    verbose = config.getoption("verbose")
    if ledger.runs:
        tr.section("fv parity", sep="-")
    for _key, run in sorted(ledger.runs.items()):
        head = (f"{run['model']} x {run['trials']}: {run['status']} against {run['other_side']} (tolerance {run['tolerance']}); "
                f"fv: {run.get('fv_side', '?')}")
        tr.write_line(head)
        for side, origin in run.get("sides", {}).items():
            tr.write_line(f"  {side} side: {origin}")
        if verbose < 0:
            continue
        fd = run.get("first_divergence")
        if fd:
            tr.write_line(f"  first divergence: stage {fd.get('stage')}, file {fd.get('file')}, key {fd.get('key')}"
                          + (f", trial ({fd.get('trial_id')}, {fd.get('trial_idx')})" if fd.get("trial_id") not in (None, "None") else "")
                          + (f"; {fd['pattern']}" if fd.get("pattern") else ""))
        if verbose > 0 or run["status"] != "PASS" or len(ledger.runs) <= 8:
            tr.write_line(f"  {'stage':<17}{'status':<10}{'mismatch_count':>15}{'max_abs_diff':>15}{'seconds':>10}")
            for name, status, count, max_abs, secs, *rest in run["stages"]:
                note = rest[0] if rest else ""
                colour = {"red": True} if status == "NONFINITE" else {"yellow": True} if note.startswith("(degenerate") else {}
                tr.write_line(f"  {name:<17}{status:<10}{count:>15}{max_abs:>15}{secs:>10.2f}" + (f"  {note}" if note else ""),
                              **colour)
        else:  # no table: the PASSes that prove little are still named
            weak = [f"{name} {note[1:-1]}" for name, status, _c, _m, _s, *rest in run["stages"]
                    for note in rest[:1] if status == "PASS" and note.startswith("(degenerate")]
            if weak and not run.get("proves_little"):
                tr.write_line("  PASS (degenerate): " + "; ".join(weak), yellow=True)
        if run.get("proves_little"):
            tr.write_line(f"  note: {run['proves_little']}", yellow=True)
        if run.get("reports"):
            tr.write_line(f"  reports: {run['reports']}")
    for reason, n in sorted(ledger.empty.items()):
        tr.write_line(f"FAIL {reason} ({n} tests compared nothing)" + (" [--allow-empty given]" if config.getoption("--allow-empty") else ""),
                      red=True)
    if ledger.skips:
        tr.write_line("fv skips: " + "; ".join(f"{n} {why}" for why, n in sorted(ledger.skips.items())))
