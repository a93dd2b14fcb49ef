"""A training job: which published dataset it reads, where the model goes, and how a pod runs it.

The training DAG prepares a job (a JSON file in the store, so that the exact inputs are on record) and runs
`python -m sera_ops.train` on it — in-process for the `local` backend, in a Kubernetes pod for `kubernetes`. The pod
mounts the storage root at the same path, so every path in the job is valid on both sides.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sera_ops.store import RunStore, atomic_write_json, read_json, safe_name


class KubernetesSettings(BaseModel):
    """Where and how the training pod runs; resources default to one GPU node slice."""

    model_config = ConfigDict(extra="forbid")

    namespace: str = "sera"
    image: str = "sera-train:latest"
    service_account: str | None = None
    cpu: str = "8"
    memory: str = "64Gi"
    gpus: int = Field(1, ge=0)
    node_selector: dict[str, str] = {}
    storage_claim: str | None = None
    startup_timeout_s: int = Field(600, ge=1)


class TrainingPlatformSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["local", "kubernetes"] = "local"
    kubernetes: KubernetesSettings = KubernetesSettings()


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


def prepare_job(storage_root: Path, repo: str, job_id: str, settings: dict, datasets: list[str],
                dataset_dir: str | None = None) -> TrainJob:
    """Resolve the dataset (the given one, or the latest published) and record the job in the store."""
    store = RunStore(storage_root, repo, "training")
    if dataset_dir:
        source = Path(dataset_dir)
        run_id = source.parent.name
    elif store.latest_dataset.exists():
        latest = read_json(store.latest_dataset)
        source, run_id = Path(latest["dataset_dir"]), latest["run_id"]
    else:
        raise FileNotFoundError(f"no published dataset for '{repo}' ({store.latest_dataset} is missing): run the "
                                f"sera__{repo} DAG first, or pass dataset_dir")
    files = [source / f"{name}.jsonl" for name in datasets]
    usable = [str(f) for f in files if f.exists() and f.stat().st_size > 0]
    if not usable:
        raise FileNotFoundError(f"none of {', '.join(map(str, files))} has records; nothing to train on")
    job_name = safe_name(job_id)
    jobs_dir = store.repo_dir / "training" / job_name
    job = TrainJob(repo=repo, job_id=job_name, dataset_run_id=run_id, data_files=usable,
                   output_dir=str(store.repo_dir / "models" / job_name), settings_file=str(jobs_dir / "settings.json"),
                   job_file=str(jobs_dir / "job.json"))
    atomic_write_json(Path(job.settings_file), settings)
    atomic_write_json(Path(job.job_file), job.to_dict())
    return job


def run_locally(job: TrainJob) -> dict:
    """The `local` backend: the same training code as the pod, in this process."""
    from sera_ops.train import TrainSettings, run_sft

    settings = TrainSettings.model_validate(read_json(Path(job.settings_file)))
    result = run_sft([Path(f) for f in job.data_files], Path(job.output_dir), settings)
    return asdict(result)
