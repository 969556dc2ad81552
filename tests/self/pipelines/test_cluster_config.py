"""Cluster settings: a per-cluster file with options on top, Slurm's time and memory formats, clear errors."""

from __future__ import annotations

import json

import pytest

from fv.errors import FVError
from fv.pipelines.cluster import cluster_config, job_setup, mem_gb, timeout_minutes


def test_file_then_options(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('executor = "slurm"\nslurm_partition = "gpu"\ngpus-per-task = 1\nmem = "64G"\ntime = "04:00:00"\nqs_per_task = 2\n')
    cc = cluster_config(str(toml), qs_per_task=4, mem=None)
    assert (cc.executor, cc.partition, cc.gpus_per_task, cc.mem, cc.timeout_min, cc.qs_per_task) == ("slurm", "gpu", 1, "64G", 240, 4)
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"cluster": {"executor": "local", "cpus_per_task": 3}}))
    assert cluster_config(str(js)).cpus_per_task == 3


@pytest.mark.parametrize("spec,minutes", [("30", 30), ("10:30", 11), ("01:30:00", 90), ("1-00:00", 1440), ("2-1", 2940)])
def test_slurm_time_formats(spec, minutes):
    assert timeout_minutes(spec) == minutes


def test_sizes_and_errors(tmp_path):
    assert (mem_gb("16G"), mem_gb("1500M"), mem_gb("1T"), mem_gb("8")) == (16, 2, 1024, 8)
    bad = tmp_path / "bad.toml"
    bad.write_text('partiton = "gpu"\n')
    with pytest.raises(FVError, match="unknown setting 'partiton'"):
        cluster_config(str(bad))
    with pytest.raises(FVError, match="--executor"):
        cluster_config(executor="pbs")
    with pytest.raises(FVError, match="--mem"):
        cluster_config(mem="lots")
    with pytest.raises(FVError, match="found nothing"):
        cluster_config(str(tmp_path / "missing.toml"))


def test_jobs_import_this_checkout_first(monkeypatch):
    import fv

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    lines = job_setup()
    assert lines[0].startswith("export PYTHONPATH=") and str(__import__("pathlib").Path(fv.__file__).resolve().parents[1]) in lines[0]
    assert "export SOURCE_DATE_EPOCH=1700000000" in lines
