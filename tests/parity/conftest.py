"""What several gates read, each made once per session (tests/support/runs.py): an fv runtime run (M4, M5, M6), a
reference dump (M3, M6), and the universal gate's ``fv universal`` run and the reference's side of it."""

from __future__ import annotations

import pytest

from fv.parity.dump import write_runtime_dump
from fv.pipelines.run import RunConfig, run_runtime
from tests.support.runs import Runs


@pytest.fixture(scope="session")
def gate_runs() -> Runs:
    """The runtime runs and reference dumps by ("run" or "ref", model, trials file)."""
    return Runs()


@pytest.fixture(scope="session")
def universal_runs() -> Runs:
    """``fv universal`` runs by (model, mode, max trials, top heads, edit layer) (test_universal_fv.py)."""
    return Runs()


@pytest.fixture(scope="session")
def universal_reference_sides() -> Runs:
    """The reference's universal values by (model, max trials, top heads, mode) (test_universal_fv.py)."""
    return Runs()


@pytest.fixture(scope="session")
def runtime_dir(fv_options, fv_model, fixed_trials, tmp_path_factory, gate_runs):
    """``fv run`` on the session's model and trials, into a temporary folder."""

    def make():
        out = tmp_path_factory.mktemp(f"run-{fv_model.name}")
        cfg = RunConfig(n_top_heads=fv_options.n_top_heads, edit_layers=[fv_options.edit_layer_for(fv_model.path, fv_model.info.n_layers)],
                        max_trials=fv_options.max_trials, mode="exact")
        result = run_runtime(fv_model, fixed_trials, out, cfg)
        write_runtime_dump(out, result, fv_options.edit_layer_for(fv_model.path, fv_model.info.n_layers))
        return out

    return gate_runs.get(("run", fv_model.name, str(fixed_trials.path)), make)


@pytest.fixture(scope="session")
def reference_dir(fv_options, fv_model, fixed_trials, reference, tmp_path_factory, gate_runs):
    """``fv reference --dump`` on the same model and trials (needs the reference)."""
    from fv.cli import main

    def make():
        out = tmp_path_factory.mktemp(f"ref-{fv_model.name}")
        args = ["reference", "--src-root", str(reference.src_root), "--model", str(fv_model.path), "--fixed-trials",
                str(fixed_trials.path), "--out", str(out), "--max-trials", str(fv_options.max_trials), "--n-top-heads",
                str(fv_options.n_top_heads), "--edit-layer", str(fv_options.edit_layer_for(fv_model.path, fv_model.info.n_layers)), "--dump",
                "--device", fv_options.device, "--src-model", fv_options.src_model]
        if fv_options.src_model == "shared":
            args += ["--dtype", fv_options.dtype, "--attn-implementation", fv_options.attn]
        if fv_options.src_compat:
            args.append("--src-compat")
        if fv_options.baukit_root:
            args += ["--baukit-root", fv_options.baukit_root]
        rc = main(args)
        assert rc == 0, "fv reference failed"
        return out

    return gate_runs.get(("ref", fv_model.name, str(fixed_trials.path)), make)
