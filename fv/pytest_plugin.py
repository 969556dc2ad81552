"""The fv pytest plugin: options, markers and session fixtures for the M0-M7 gates.

Registered through the ``pytest11`` entry point, so ``--fv-model``, ``--src-root`` and friends work from any
rootdir. Models load once per session (or xdist worker); parity runs are computed once per (model, trials,
parameters) and shared by every test that asks. Without ``--fv-model`` the suite runs on both tiny models.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fv.errors import FVError

MARKERS = {
    "m0": "M0: fixed trials, prompt and slot parity", "m1": "M1: golden artifacts from the reference",
    "m2": "M2: the stage-by-stage parity gate", "m3": "M3: the reference dump", "m4": "M4: the fv runtime artifacts",
    "m5": "M5: the stage diff", "m6": "M6: no divergence between fresh runs", "m7": "M7: relation q-wise transfer",
    "tiny": "runs on an embedded tiny model", "gpu": "needs a CUDA device", "src": "needs the reference src/",
    "slow": "takes more than a few seconds",
}
TINY_DEFAULT = ("tiny-llama", "tiny-llama3tok")


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("fv", "function-vector parity suite")
    g.addoption("--fv-model", default=None, help="local model folder or tiny model name; comma-separated for several (default: both tiny models)")
    g.addoption("--fv-device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    g.addoption("--fv-dtype", default="float32", help="float32, bfloat16 or float16 (default float32)")
    g.addoption("--fv-mode", default="exact", choices=("exact", "fast"), help="fv runtime mode compared with the reference")
    g.addoption("--src-root", default=None, help="the reference's src/ (else $FV_SRC_ROOT, else ./src)")
    g.addoption("--baukit-root", default=None, help="folder holding baukit/nethook.py when baukit does not import (else $FV_BAUKIT_ROOT)")
    g.addoption("--src-compat", action="store_true", help="apply the reference's FV addition to tensor layer outputs (a silent no-op on transformers 5.x otherwise); recorded in reports")
    g.addoption("--require-src", action="store_true", help="fail, instead of skip, when the reference is missing")
    g.addoption("--fixed-trials", default=None, help="a fixed-trials JSON to test (default: trials made from the embedded and shared antonym data)")
    g.addoption("--dataset", default=None, help="an ICL dataset JSON to make fixed trials from (10 trials, 10 shots, seed 0)")
    g.addoption("--n-top-heads", type=int, default=10, help="heads in the FV (default 10)")
    g.addoption("--edit-layer", type=int, default=9, help="layer the FV is added after (default 9)")
    g.addoption("--max-trials", type=int, default=5, help="trials compared per file (default 5)")
    g.addoption("--q-list", default=None, help="M7: comma-separated q ids, or 'all'")
    g.addoption("--relation-csv", default=None, help="M7: relation CSV (default: shared relationA_ex.csv, else fixtures/relation_tiny.csv)")
    g.addoption("--n-trials-per-q", type=int, default=3, help="M7: trials per q (default 3)")
    g.addoption("--fv-out", default=None, help="where reports go (default results_fv/ under the rootdir)")


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    # Goldens live in one folder per model and trials, not beside the test module; syrupy warns that it cannot
    # relate such paths to a test, which is the design here, not a problem.
    config.addinivalue_line("filterwarnings", "ignore:Can not relate snapshot:UserWarning")
    warnings.filterwarnings("ignore", message="Can not relate snapshot", category=UserWarning)


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

    @classmethod
    def of(cls, config: pytest.Config) -> "FVOptions":
        o = config.getoption
        models = [m.strip() for m in (o("--fv-model") or ",".join(TINY_DEFAULT)).split(",") if m.strip()]
        # Paths given as option values (``--src-root /x/src``) take part in pytest's rootdir guess, so the
        # rootdir can land outside the project: shared/ is looked up beside the fv checkout instead, and
        # reports go under the directory pytest was invoked from.
        from fv.paths import REPO_ROOT

        root = REPO_ROOT if (REPO_ROOT / "fixtures").is_dir() else Path(config.rootpath)
        invoked = Path(config.invocation_params.dir)
        return cls(models, o("--fv-device"), o("--fv-dtype"), o("--fv-mode"), o("--src-root"), o("--baukit-root"),
                   o("--src-compat"), o("--require-src"), o("--fixed-trials"), o("--dataset"), o("--n-top-heads"),
                   o("--edit-layer"), o("--max-trials"), o("--q-list"), o("--relation-csv"), o("--n-trials-per-q"),
                   Path(o("--fv-out")) if o("--fv-out") else invoked / "results_fv", root)


def shared_dir(rootdir: Path) -> Path | None:
    """``$FV_SHARED_DIR``, else ``shared/`` beside or inside the checkout."""
    env = os.environ.get("FV_SHARED_DIR")
    for cand in ([Path(env)] if env else []) + [rootdir.parent / "shared", rootdir / "shared"]:
        if (cand / "data").is_dir():
            return cand
    return None


def trial_sets(opts: FVOptions) -> list[str]:
    """Names of the fixed-trials sets M1/M2 run on."""
    if opts.fixed_trials:
        return ["custom"]
    if opts.dataset:
        return ["dataset"]
    sets = ["antonym_tiny"]
    if shared_dir(opts.rootdir) is not None:
        sets.append("antonym_shared")
    return sets


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    opts = FVOptions.of(metafunc.config)
    if "fv_model_name" in metafunc.fixturenames:
        metafunc.parametrize("fv_model_name", opts.models, scope="session")
    if "trials_set" in metafunc.fixturenames:
        metafunc.parametrize("trials_set", trial_sets(opts), scope="session")
    if "trial_index" in metafunc.fixturenames:
        metafunc.parametrize("trial_index", range(opts.max_trials), ids=lambda i: f"trial{i}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from fv.model.tiny import TINY_MODELS

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


@pytest.fixture(scope="session")
def fv_options(pytestconfig: pytest.Config) -> FVOptions:
    return FVOptions.of(pytestconfig)


@pytest.fixture(scope="session")
def shared_data(fv_options: FVOptions) -> Path:
    """``../shared/data`` beside the checkout; tests that need it skip cleanly without it."""
    d = shared_dir(fv_options.rootdir)
    if d is None:
        pytest.skip("no shared/ folder beside the checkout (set FV_SHARED_DIR to point at one)")
    return d / "data"


def load_session_model(opts: FVOptions, name: str) -> Any:
    from fv.model.loading import load_model

    key = (name, opts.device, opts.dtype)
    if key not in _MODELS:
        n_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
        if n_workers > 1:  # share the CPU cores among xdist workers instead of oversubscribing them
            import torch

            torch.set_num_threads(max(1, (os.cpu_count() or 1) // n_workers))
        worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...: one GPU each when there are several
        _MODELS[key] = load_model(name, opts.device, opts.dtype, int(worker[2:]) if worker[2:].isdigit() else None)
    return _MODELS[key]


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
        raw = make_icl_trials(dataset, lm.tokenizer, n_trials, n_shots, seed, model_name_for_tokenizer=lm.name,
                              model_prepend_bos=lm.prepend_bos, dataset_json_label=str(dataset.name))
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
    d = shared_dir(fv_options.rootdir)
    return trials_for(fv_options, fv_model, d / "data" / "antonym.json")


def fv_params(opts: FVOptions) -> Any:
    from fv.parity.stages import Params

    return Params(n_top_heads=opts.n_top_heads, edit_layer=opts.edit_layer, max_trials=opts.max_trials, mode=opts.mode)


def parity_for(opts: FVOptions, lm: Any, trials: Any, require_reference: bool = False) -> Any:
    """The cached parity run for (model, trials, parameters): live reference when present, else goldens."""
    from fv.parity.run import default_out_dir, run_parity
    from fv.reference.stages import STAGE_FUNCTIONS, live_source

    ref = get_reference(opts)
    if isinstance(ref, str):
        if opts.require_src:
            pytest.fail(ref, pytrace=False)
        if require_reference:
            pytest.skip(ref)
        ref = None
    params = fv_params(opts)
    key = (lm.name, str(trials.path), trials.sha256, tuple(sorted(params.as_dict().items())), ref is not None)
    if key not in _PARITY:
        try:
            lm.info.check_edit_layer(params.edit_layer)
            _PARITY[key] = run_parity(lm, trials, params, live_source(ref) if ref is not None else None,
                                      default_out_dir(opts.out_root, trials), stage_functions=STAGE_FUNCTIONS)
        except FileNotFoundError as exc:
            _PARITY[key] = f"reference absent and {exc}: regenerate with `pytest -m m1 --snapshot-update --src-root <src>`"
        except FVError as exc:
            _PARITY[key] = exc
        except Exception as exc:  # computed once: every test of this run reports it without recomputing
            _PARITY[key] = RuntimeError(f"the parity run failed: {type(exc).__name__}: {exc}")
            _PARITY[key].__cause__ = exc
    run = _PARITY[key]
    if isinstance(run, str):
        pytest.skip(run)
    if isinstance(run, FVError):
        pytest.fail(str(run), pytrace=False)
    if isinstance(run, Exception):
        raise run
    return run


@pytest.fixture(scope="session")
def parity_run(fv_options: FVOptions, fv_model: Any, fixed_trials: Any) -> Any:
    return parity_for(fv_options, fv_model, fixed_trials)
