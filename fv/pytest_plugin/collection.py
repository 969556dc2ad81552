"""What a session collects: the gates parametrized by the session's inputs, and fv's own tests (``tests/self/``)
kept apart from them (deselected, with one line saying so, when the session names a user's inputs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fv.pytest_plugin.options import USER_INPUT_OPTIONS, FVOptions, belongs, trial_sets

SELF_DESELECTED = pytest.StashKey[int]()


def generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize the gates by the session's models, trials sets and trial indices."""
    opts = FVOptions.of(metafunc.config)
    if "fv_model_name" in metafunc.fixturenames:  # a default model this machine cannot build: collected, skipped
        skipped = [pytest.param(name, marks=pytest.mark.skip(reason=why)) for name, why in opts.unavailable.items()]
        models = opts.self_models if _under_self(Path(str(metafunc.definition.path))) else opts.models
        metafunc.parametrize("fv_model_name", [*models, *skipped], scope="session")
    if "trials_set" in metafunc.fixturenames:
        metafunc.parametrize("trials_set", trial_sets(opts), scope="session")
    if "trial_index" in metafunc.fixturenames:
        metafunc.parametrize("trial_index", range(opts.max_trials), ids=lambda i: f"trial{i}")
    if "port_run" in metafunc.fixturenames:  # each run folder of --port-artifacts (none without it: deselected)
        from fv.ports.layouts import find_runs

        root = Path(opts.port_artifacts or ".")
        runs = find_runs(root, opts.port_layout) if opts.port_artifacts else []
        metafunc.parametrize("port_run", runs, scope="session",
                             ids=[(str(f.relative_to(root)) if f != root else f.name) or f.name for f, _r in runs])


def _under_self(path: Path) -> bool:
    parts = path.parent.parts
    return any(a == "tests" and b == "self" for a, b in zip(parts, parts[1:]))


def is_self_test(item: pytest.Item) -> bool:
    """fv's own test: under a ``tests/self/`` folder, or marked ``self``."""
    return bool(item.get_closest_marker("self")) or _under_self(Path(str(item.path)))


def user_inputs_named(config: pytest.Config) -> list[str]:
    """The options of ``USER_INPUT_OPTIONS`` this session gives."""
    return [name for name in USER_INPUT_OPTIONS if config.getoption(name)]


def self_tests_wanted(config: pytest.Config) -> bool:
    """Self-tests run in the default session, with --fv-self-tests, or when -m names the ``self`` marker."""
    import re

    return (not user_inputs_named(config) or config.getoption("--fv-self-tests")
            or bool(re.search(r"(?<![\w-])self(?![\w-])", config.getoption("markexpr") or "")))


def modify_items(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The collection policy: fv's own tests marked ``self`` and deselected when the session names a user's inputs
    (unless asked for), ``first_pair``/``first_tiny`` tests kept to their pair, the gates of a port's files
    (``port_run``) kept exactly when ``--port-artifacts`` is given (and then the gates of fv's runtime left out), and
    the ``tiny``, ``src`` and ``gpu`` markers added."""
    from fv.model.tiny import TINY_MODELS

    opts = FVOptions.of(config)
    firsts = {own: {"fv_model_name": models[0], "trials_set": trial_sets(opts, models[0])[0]}
              for own, models in ((False, opts.models), (True, opts.self_models or opts.models))}
    wanted = self_tests_wanted(config)
    keep, drop, own = [], [], []
    for item in items:
        if is_self_test(item):
            item.add_marker(pytest.mark.self)
            if not wanted:
                own.append(item)
                continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        if ("port_run" in getattr(item, "fixturenames", ())) != bool(opts.port_artifacts) and not is_self_test(item):
            drop.append(item)
            continue
        first = firsts[_under_self(Path(str(item.path)))]
        off = not belongs(opts, params)  # a model paired with another model's default inputs
        off = off or (item.get_closest_marker("first_pair") and any(params.get(k, v) != v for k, v in first.items()))
        off = off or (item.get_closest_marker("first_tiny") and not config.getoption("--fv-model")
                      and params.get("fv_model_name", first["fv_model_name"]) != first["fv_model_name"])
        (drop if off else keep).append(item)
    if drop or own:
        config.hook.pytest_deselected(items=drop + own)
        items[:] = keep
    config.stash[SELF_DESELECTED] = len(own)
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
