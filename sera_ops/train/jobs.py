"""A training job: which published dataset it reads, where the model goes, and how a pod runs it.

The training DAG prepares a job (a JSON file in the store, so that the exact inputs are on record) and runs
`sera_ops.train` on it — in-process for the `local` backend, in a Kubernetes pod for `kubernetes`, where
`accelerate launch` starts one process per GPU (`launcher_command`). The pod mounts the storage root at the same path,
so every path in the job is valid on both sides.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from sera_ops.settings.training import TrainSettings
from sera_ops.store.io import (
    StorePath,
    atomic_write_bytes,
    atomic_write_json,
    is_local,
    locate,
    read_json,
    store_root,
    store_url,
)
from sera_ops.store.layout import DatasetFiles, RepoStore, safe_name
from sera_ops.train.cli import TRAIN_MODULE

ACCELERATE_CONFIG_DIR = "sera_ops/accelerate"
"""The shipped accelerate configs, relative to the project root: the working directory of the training image
(docker/train/Dockerfile) and of a checkout, so the same command runs in both."""


def launcher_command(gpus: int, distributed: Literal["ddp", "fsdp"] = "ddp") -> list[str]:
    """`accelerate launch` running `sera_ops.train` on one process per GPU (one CPU process when `gpus` is 0); the
    job's `arguments()` follow it. A CPU-only machine given several processes trains over gloo. Numbers are joined to
    their flag: the training DAG renders templates as native objects, which would turn a lone "2" into an int."""
    command = ["accelerate", "launch", "--config_file", f"{ACCELERATE_CONFIG_DIR}/{distributed}.yaml",
               f"--num_processes={max(gpus, 1)}"]
    return command + (["--cpu"] if gpus == 0 else []) + ["-m", TRAIN_MODULE]


@dataclass(frozen=True)
class TrainJob:
    repo: str
    job_id: str
    dataset_run_id: str
    data_files: list[str]
    output_dir: str
    settings_file: str
    job_file: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainJob:
        return cls(**data)

    def arguments(self) -> list[str]:
        """The `python -m sera_ops.train` arguments (also the pod's)."""
        args: list[str] = []
        for path in self.data_files:
            args += ["--data", path]
        return args + ["--out", self.output_dir, "--settings", self.settings_file]


def prepare_job(storage_root: StorePath | str, repo: str, job_id: str, settings: dict, datasets: list[str],
                dataset_dir: str | None = None) -> TrainJob:
    """Resolve the dataset (the given one, or the latest published) and record the job in the store. Locations are
    recorded with `store_url`: plain paths locally, `s3://bucket/key` (no credentials) on object storage."""
    store = RepoStore(storage_root, repo)
    latest = store.latest()
    if dataset_dir:
        source = locate(store.root, dataset_dir)
        run_id = source.parent.name
    elif latest:
        source, run_id = locate(store.root, latest["dataset_dir"]), latest["run_id"]
    else:
        raise FileNotFoundError(f"no published dataset for '{repo}' ({store_url(store.latest_dataset)} is missing): "
                                f"run the sera__{repo} DAG first, or pass dataset_dir")
    files = [DatasetFiles(source).split(name) for name in datasets]
    usable = [store_url(f) for f in files if f.exists() and f.stat().st_size > 0]
    if not usable:
        raise FileNotFoundError(f"none of {', '.join(map(store_url, files))} has records; nothing to train on")
    job_name = safe_name(job_id)
    settings_file, job_file = store.training_settings_file(job_name), store.training_job_file(job_name)
    job = TrainJob(repo=repo, job_id=job_name, dataset_run_id=run_id, data_files=usable,
                   output_dir=store_url(store.model_dir(job_name)), settings_file=store_url(settings_file),
                   job_file=store_url(job_file))
    atomic_write_json(settings_file, settings)
    atomic_write_json(job_file, job.to_dict())
    return job


def run_locally(job: TrainJob, storage_root: StorePath | str) -> dict:
    """The `local` backend: the same training code as the pod, in this process. On object storage the job's
    inputs are copied to a temp dir first and the model uploaded after, its `metrics.json` last: a model folder with
    metrics is complete."""
    from sera_ops.train.run import METRICS_FILE, run_sft

    root = store_root(storage_root)
    if is_local(root):
        settings = TrainSettings.model_validate(read_json(Path(job.settings_file)))
        return asdict(run_sft([Path(f) for f in job.data_files], Path(job.output_dir), settings))
    settings = TrainSettings.model_validate(read_json(locate(root, job.settings_file)))
    with tempfile.TemporaryDirectory(prefix="sera-train-") as tmp:
        inputs = Path(tmp) / "data"
        inputs.mkdir()
        local_files = []
        for location in job.data_files:
            local = inputs / Path(location).name
            local.write_bytes(locate(root, location).read_bytes())
            local_files.append(local)
        result = run_sft(local_files, Path(tmp) / "model", settings)
        model, target = Path(result.output_dir), locate(root, job.output_dir)
        files = sorted((f for f in model.rglob("*") if f.is_file()), key=lambda f: f.name == METRICS_FILE)
        for file in files:
            atomic_write_bytes(target / file.relative_to(model).as_posix(), file.read_bytes())
    return asdict(result) | {"output_dir": job.output_dir}
