"""The fv pytest plugin: options, markers and session fixtures for the M0-M7 gates.

Registered through the ``pytest11`` entry point (``fvpytest``), so ``--fv-model``, ``--src-root`` and friends work
from any rootdir. Models load once per session (or xdist worker); parity runs are computed once per (model, trials,
parameters) and shared by every test that asks. Without ``--fv-model`` the suite runs on both tiny models.

The hooks here delegate, as syrupy's do, to modules with one job each:

- ``options``: the options, declared once, read once into ``FVOptions`` (kept in ``config.stash``), checked once;
- ``collection``: the gates parametrized by the session's inputs, fv's own tests kept apart;
- ``session``: the session object holding models, trials, parity runs and the reference;
- ``summary``: the ledger of what the gates compared and the ``fv parity`` section of the terminal summary;
- the golden check itself is ``fv.parity.golden_check`` (this module only turns its answer into pytest's).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from fv.errors import FVError, TokenizerUnavailable
from fv.pytest_plugin.collection import generate_tests, modify_items
from fv.pytest_plugin.options import (  # noqa: F401  (re-exported: tests and conftests import them from here)
    MARKERS,
    TINY_DEFAULT,
    USER_INPUT_OPTIONS,
    FVOptions,
    add_options,
    check_options,
    default_relation_csv,
    trial_sets,
)
from fv.pytest_plugin.session import (  # noqa: F401  (re-exported)
    cached_source,
    check_reference_side,
    current,
    fv_params,
    get_reference,
    load_session_model,
    parity_for,
    probe_cache,
    reference_own_model,
    session_reference,
    share_cores,
    start_session,
    trials_for,
    universal_side,
)
from fv.pytest_plugin.summary import EMPTY_GATE, GateLedger, GateReporter, parity_summary, write_summary  # noqa: F401


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_unconfigure(config: pytest.Config) -> None:
    """The session's reference and port processes ended and their folders removed, on every worker (an xdist
    worker may leave without running ``atexit``)."""
    from fv.reference.process import close_all

    close_all()
    for proc in current().ports.values():
        proc.close()


def pytest_configure(config: pytest.Config) -> None:
    """Markers; then, once per session (not on xdist workers, which inherit it): the options read and checked, the
    door's preflight (one line per refusal, exit code 4) and the reference's own process; the session object and
    the gate reporter registered."""
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    # Goldens live in one folder per model and trials, not beside the test module; syrupy warns that it cannot
    # relate such paths to a test, which is the design here, not a problem.
    config.addinivalue_line("filterwarnings", r"ignore:\s*Can not relate snapshot:UserWarning")
    warnings.filterwarnings("ignore", message="Can not relate snapshot", category=UserWarning)
    start_session()  # first: what the preflight loads (the reference, its own models) is the session's to keep
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
    config.pluginmanager.register(GateReporter(config), "fv-gate-reporter")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    generate_tests(metafunc)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    modify_items(config, items)


# A test (or its fixture) that needs a tokenizer fv does not ship, on a machine that has not fetched it, is skipped
# with the command that fetches it (counted in the "fv skips" line), not failed.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Any:
    try:
        return (yield)
    except TokenizerUnavailable as exc:
        pytest.skip(str(exc))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    try:
        return (yield)
    except TokenizerUnavailable as exc:
        pytest.skip(str(exc))


# ---- fixtures ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def fv_options(pytestconfig: pytest.Config) -> FVOptions:
    return FVOptions.of(pytestconfig)


@pytest.fixture(scope="session")
def fixture_data() -> Path:
    """``fixtures/data``: the reference's datasets and real user files the suite ships (see its README.md)."""
    from fv.paths import FIXTURES

    return FIXTURES / "data"


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


@pytest.fixture(scope="session")
def reference(fv_options: FVOptions) -> Any:
    """The reference adapter; skips with one clear reason without it (fails with --require-src)."""
    ref = get_reference(fv_options)
    if isinstance(ref, str):
        if fv_options.require_src:
            pytest.fail(ref, pytrace=False)
        pytest.skip(ref)
    return ref


@pytest.fixture(scope="session")
def fixed_trials(fv_options: FVOptions, fv_model: Any, trials_set: str) -> Any:
    from fv.runtime.trials import load_trials

    if trials_set == "custom":
        try:
            return load_trials(fv_options.fixed_trials)
        except FVError as exc:
            pytest.fail(str(exc), pytrace=False)
    if trials_set == "dataset":
        return trials_for(fv_options, fv_model, Path(fv_options.dataset))
    from fv.model.default_inputs import default_inputs

    return trials_for(fv_options, fv_model, default_inputs(fv_model.path).trial_sets[trials_set])


@pytest.fixture
def parity_run(fv_options: FVOptions, fv_model: Any, fixed_trials: Any) -> Any:
    return parity_for(fv_options, fv_model, fixed_trials)


def assert_golden(run: Any, artifact: str, snapshot: Any, update: bool) -> None:
    """One golden artifact of a parity run (``fv.parity.golden_check``): with ``--snapshot-update`` written from the
    live reference's value (never fv's), otherwise fv's value compared with it within the dtype's tolerance."""
    from fv.parity.golden_check import golden_check

    check = golden_check(run, artifact, update)
    if check.action == "skip":
        pytest.skip(check.message)
    if check.action == "fail":
        pytest.fail(check.message, pytrace=False)
    if check.action == "mismatch":
        raise AssertionError(check.message)
    if check.action == "compare":
        assert check.value == snapshot.use_extension(check.extension)(name=artifact)
