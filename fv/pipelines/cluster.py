"""Job arrays on a scheduler, by submitit: one code path for a Slurm cluster and for local processes.

A :class:`ClusterConfig` holds what the scheduler needs (partition, GPUs, CPUs, memory, time, array
parallelism, qs per task); it comes from a small per-cluster file (TOML or JSON, as Hydra's submitit launcher
keeps one per cluster) with command-line options on top. :func:`make_executor` builds a submitit
``AutoExecutor`` for ``slurm`` or ``local``: the same parameters, the same pickled job function, the same
result files, so the local executor tests exactly what runs on the cluster. :func:`wait_jobs` follows a job
array, asking the scheduler once per poll for every job instead of once per job.

Jobs run a fresh interpreter on another machine: the job functions live in importable modules (submitit pickles
them by reference), and every job exports the driver's ``PYTHONPATH`` (this checkout first), fv's cache and the
reproducibility variables before it starts, so a fresh clone with its own ``.venv`` runs its own code.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from fv.errors import FVError

EXECUTORS = ("local", "slurm")
# variables a job needs exactly as the driver has them: where fv and its data live, and what pins output bytes
PASSED_ENV = ("FV_CACHE_DIR", "FV_SHARED_DIR", "FV_SRC_ROOT", "FV_BAUKIT_ROOT", "SOURCE_DATE_EPOCH", "HF_HOME",
              "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "CUBLAS_WORKSPACE_CONFIG")


@dataclass
class ClusterConfig:
    """Scheduler settings for one array; ``None`` leaves the scheduler's default."""

    executor: str = "local"
    partition: str | None = None
    gpus_per_task: int = 0
    cpus_per_task: int = 1
    mem: str | None = None
    time: str = "60"
    array_parallelism: int = 64
    qs_per_task: int = 1
    signal_delay_s: int = 30
    poll_s: float = 2.0
    setup: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise FVError(f"--executor: expected one of {', '.join(EXECUTORS)}, found {self.executor!r}")
        for name in ("qs_per_task", "cpus_per_task", "array_parallelism"):
            if int(getattr(self, name)) < 1:
                raise FVError(f"{name}: expected a positive integer, found {getattr(self, name)!r}")
        if self.gpus_per_task < 0:
            raise FVError(f"gpus_per_task: expected 0 or more, found {self.gpus_per_task!r}")
        timeout_minutes(self.time)
        if self.mem is not None:
            mem_gb(self.mem)

    @property
    def timeout_min(self) -> int:
        return timeout_minutes(self.time)


def timeout_minutes(spec: str | int) -> int:
    """Slurm's time formats (``MM``, ``HH:MM:SS``, ``D-HH:MM``, ...) as whole minutes, at least 1."""
    s = str(spec).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", s)
    if not m:
        raise FVError(f"--time: expected minutes or [D-]HH:MM[:SS] as Slurm writes it, found {spec!r}")
    days, a, b, c = m.groups()
    if days is None and b is None:
        minutes = int(a)
    elif c is None and days is None:  # MM:SS
        minutes = int(a) + (1 if int(b) else 0)
    else:  # [D-]HH:MM[:SS] or D-HH
        minutes = int(days or 0) * 1440 + int(a) * 60 + int(b or 0) + (1 if c and int(c) else 0)
    return max(1, minutes)


def mem_gb(spec: str) -> int:
    """``16G``, ``16GB``, ``16000M`` or a bare number of GB, as whole GB (rounded up)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([MmGgTt]?)[Bb]?\s*", str(spec))
    if not m:
        raise FVError(f"--mem: expected a size such as 16G or 32000M, found {spec!r}")
    value, unit = float(m.group(1)), m.group(2).upper() or "G"
    gb = value / 1024 if unit == "M" else value * 1024 if unit == "T" else value
    return max(1, int(-(-gb // 1)))


def load_cluster_file(path: str | Path) -> dict:
    """A per-cluster settings file, TOML or JSON: keys as the options without ``--`` (``slurm_partition`` and
    ``partition`` alike), optionally inside a ``[cluster]`` table."""
    p = Path(path)
    if not p.is_file():
        raise FVError(f"--cluster-config: expected a TOML or JSON file, found nothing at {p}")
    text = p.read_text()
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import tomllib

            data = tomllib.loads(text)
    except ValueError as exc:
        raise FVError(f"--cluster-config {p}: not valid {'JSON' if p.suffix.lower() == '.json' else 'TOML'}: {exc}") from exc
    data = data.get("cluster", data)
    known = {f.name for f in fields(ClusterConfig)}
    out = {}
    for key, value in data.items():
        k = key.replace("-", "_")
        k = {"slurm_partition": "partition", "slurm_array_parallelism": "array_parallelism", "timeout_min": "time"}.get(k, k)
        if k not in known:
            raise FVError(f"--cluster-config {p}: unknown setting {key!r}; expected one of {', '.join(sorted(known))}")
        out[k] = value
    return out


def cluster_config(file: str | None = None, **overrides: Any) -> ClusterConfig:
    """The file's settings, then every override that is not ``None``."""
    values = load_cluster_file(file) if file else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ClusterConfig(**values)
    except TypeError as exc:
        raise FVError(f"cluster settings: {exc}") from exc


def job_setup(extra: Sequence[str] = ()) -> list[str]:
    """Shell lines every job runs first: this checkout's fv ahead of any installed one, and the driver's
    fv variables. The interpreter itself is the driver's (submitit runs ``sys.executable``)."""
    import fv

    checkout = str(Path(fv.__file__).resolve().parents[1])
    lines = [f"export PYTHONPATH={shlex.quote(checkout)}${{PYTHONPATH:+:$PYTHONPATH}}"]
    lines += [f"export {k}={shlex.quote(os.environ[k])}" for k in PASSED_ENV if k in os.environ]
    return lines + list(extra)


def make_executor(cc: ClusterConfig, folder: str | Path, name: str) -> Any:
    """A submitit executor for ``cc.executor``: AutoExecutor for both, so both take the same path."""
    try:
        import submitit
    except ImportError as exc:
        raise FVError("--executor needs submitit: pip install submitit (it comes with fv's dependencies)") from exc
    if cc.executor == "slurm":
        import shutil

        if not shutil.which("sbatch"):
            raise FVError("--executor slurm: expected Slurm's sbatch on PATH, found none; use --executor local or a login node")
    ex = submitit.AutoExecutor(folder=str(folder), cluster=cc.executor)
    params: dict[str, Any] = {
        "name": name, "timeout_min": cc.timeout_min, "cpus_per_task": int(cc.cpus_per_task),
        "gpus_per_node": int(cc.gpus_per_task), "tasks_per_node": 1, "nodes": 1,
        "slurm_array_parallelism": int(cc.array_parallelism), "slurm_signal_delay_s": int(cc.signal_delay_s),
        "slurm_setup": job_setup(cc.setup), "local_setup": job_setup(cc.setup),
    }
    if cc.mem is not None:
        params["mem_gb"] = mem_gb(cc.mem)
    if cc.partition:
        params["slurm_partition"] = cc.partition
    ex.update_parameters(**params)
    return ex


def job_record(job: Any) -> dict:
    """What to keep about one submitted job: its id and scheduler logs."""
    return {"job_id": str(job.job_id), "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)}


def array_id(jobs: Sequence[Any]) -> str:
    """The array's id as the scheduler prints it (``1234`` for ``1234_0 .. 1234_n``)."""
    ids = sorted({str(j.job_id).split("_")[0] for j in jobs})
    return ",".join(ids)


def wait_jobs(jobs: Sequence[Any], on_done: Callable[[int, Any, BaseException | None], None],
              on_poll: Callable[[], None] = lambda: None, poll_s: float = 2.0) -> None:
    """Wait for every job; ``on_done(index, result, error)`` once per job as it ends (error set when the job
    raised or ended without a result: cancelled, timed out, out of memory, node failure)."""
    pending = dict(enumerate(jobs))
    last = 0.0
    while pending:
        now = time.monotonic()
        job0 = next(iter(pending.values()))
        if type(job0).__name__ == "SlurmJob" and now - last >= poll_s:  # one sacct call for the whole array
            job0.watcher.update()
            last = now
        for i, job in list(pending.items()):
            if not job.done():
                continue
            del pending[i]
            try:
                result, error = job.result(), None
            except Exception as exc:  # noqa: BLE001 - every way a job ends without a result is recorded
                result, error = None, exc
            on_done(i, result, error)
        on_poll()
        if pending:
            time.sleep(min(0.5, poll_s))


def job_state(folder: str | Path, job_id: str, executor: str) -> str:
    """The scheduler's word for a job submitted earlier (``UNKNOWN`` for a local job: its processes belong to
    the driver that started them)."""
    if executor != "slurm":
        return "UNKNOWN"
    from submitit.slurm.slurm import SlurmJob

    return str(SlurmJob(folder=Path(folder), job_id=job_id).get_info(mode="force").get("State") or "UNKNOWN")


def save_submission(path: Path, executor: str, cc: ClusterConfig, tasks: list[dict], extra: dict | None = None) -> None:
    """Write a submission record to ``path`` as JSON, atomically: the executor, the cluster config, this
    interpreter and the tasks, plus any ``extra`` keys.
    """
    from fv.io import write_json

    write_json(path, {"executor": executor, "cluster": asdict(cc), "python": sys.executable, "tasks": tasks, **(extra or {})})
