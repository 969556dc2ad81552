"""Folders that several gates read: an fv runtime run (M4, M5, M6) and a reference dump (M3, M6), made once."""

from __future__ import annotations

import pytest

from fv.parity.dump import write_runtime_dump
from fv.runtime.pipeline import RunConfig, run_runtime

_RUNS: dict = {}


@pytest.fixture(scope="session")
def runtime_dir(fv_options, fv_model, fixed_trials, tmp_path_factory):
    """``fv run`` on the session's model and trials, into a temporary folder."""
    key = ("run", fv_model.name, str(fixed_trials.path))
    if key not in _RUNS:
        out = tmp_path_factory.mktemp(f"run-{fv_model.name}")
        cfg = RunConfig(n_top_heads=fv_options.n_top_heads, edit_layers=[fv_options.edit_layer],
                        max_trials=fv_options.max_trials, mode="exact")
        result = run_runtime(fv_model, fixed_trials, out, cfg)
        write_runtime_dump(out, result, fv_options.edit_layer)
        _RUNS[key] = out
    return _RUNS[key]


@pytest.fixture(scope="session")
def reference_dir(fv_options, fv_model, fixed_trials, reference, tmp_path_factory):
    """``fv reference --dump`` on the same model and trials (needs the reference)."""
    from fv.cli import main

    key = ("ref", fv_model.name, str(fixed_trials.path))
    if key not in _RUNS:
        out = tmp_path_factory.mktemp(f"ref-{fv_model.name}")
        args = ["reference", "--src-root", str(reference.src_root), "--model", str(fv_model.path), "--fixed-trials",
                str(fixed_trials.path), "--out", str(out), "--max-trials", str(fv_options.max_trials), "--n-top-heads",
                str(fv_options.n_top_heads), "--edit-layer", str(fv_options.edit_layer), "--dump",
                "--device", fv_options.device, "--src-model", fv_options.src_model]
        if fv_options.src_model == "shared":
            args += ["--dtype", fv_options.dtype, "--attn-implementation", fv_options.attn]
        if fv_options.src_compat:
            args.append("--src-compat")
        if fv_options.baukit_root:
            args += ["--baukit-root", fv_options.baukit_root]
        rc = main(args)
        assert rc == 0, "fv reference failed"
        _RUNS[key] = out
    return _RUNS[key]
