"""M1: golden artifacts. The reference's stage values, kept as syrupy snapshots under snapshots/.

``pytest -m m1 --snapshot-update --src-root <src>`` (re)writes them from the live reference; without the
reference an update is refused, so no golden ever comes from fv itself. Otherwise fv's values must match them.
"""

from __future__ import annotations

import pytest

from fv.parity.compare import tolerance_for
from fv.parity.golden import GOLDEN_ARTIFACTS, artifact_value, golden_dir
from fv.io import write_json
from fv.paths import SNAPSHOT_ROOT
from fv.parity.snapshot import golden_extension

pytestmark = pytest.mark.m1


def _folder(run):
    return golden_dir(SNAPSHOT_ROOT, run.lm.name, run.trials.id, len(run.trial_keys))


def _check_shape(run, artifact, value):
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


@pytest.mark.parametrize("artifact", list(GOLDEN_ARTIFACTS))
def test_golden(parity_run, snapshot, request, artifact):
    folder = _folder(parity_run)
    kind = GOLDEN_ARTIFACTS[artifact][0]
    ext = golden_extension(folder, kind, tolerance_for(parity_run.lm.dtype, exact=False))
    if request.config.option.update_snapshots:
        if parity_run.source != "reference":
            pytest.fail("refusing to write goldens without the reference: goldens are the reference's numbers. "
                        "Pass --src-root <reference src>.", pytrace=False)
        write_json(folder.parent / f"{folder.name}.meta.json", {**parity_run.result.meta, "notes": parity_run.result.meta["src_notes"]})
        value = artifact_value(parity_run.src, artifact)
        _check_shape(parity_run, artifact, value)
        assert value == snapshot.use_extension(ext)(name=artifact)
        return
    value = artifact_value(parity_run.fv, artifact)
    _check_shape(parity_run, artifact, value)
    assert (folder / f"{artifact}.{ext._file_extension}").is_file(), f"golden {artifact} missing in {folder}"
    assert value == snapshot.use_extension(ext)(name=artifact)
