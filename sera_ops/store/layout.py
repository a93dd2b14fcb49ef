"""The run store: the one module that knows where every stage's results live, on local disk or object storage.

Layout (one directory per repository and DAG run; names are filesystem-safe versions of the run id):

    <root>/<repo>/sources/                        bare clone / bundled sample of the repository      (worker-local)
    <root>/<repo>/cache/snapshots/<commit>/       plain checkout of one commit                       (worker-local)
    <root>/<repo>/cache/inventory/<commit>.json   function inventory, shared by all runs (keyed by full commit)
    <root>/<repo>/cache/demo_issues.json          demonstration issues fetched from GitHub
    <root>/<repo>/runs/<run>/commits.json          selected commits; manifest.json, mirror.json: what the run was
    <root>/<repo>/runs/<run>/images/<commit>.json  image (or local sandbox) per commit; <commit>.error.json: why not
    <root>/<repo>/runs/<run>/instances.json        sampled instances; batches.json: their split into batches
    <root>/<repo>/runs/<run>/instances/<id>/       rollout1.json, rollout1.a<n>.traj.json, synth.json, rollout2.json,
                                                   rollout2.traj.json, verdict.json, duplicate.json, not_started.json,
                                                   <stage>.error.json
    <root>/<repo>/runs/<run>/dataset/              t1/t2 .jsonl and .parquet, stats.json, README.md, plots
    <root>/<repo>/datasets/latest.json             the latest published dataset (and one pointer per run)
    <root>/<repo>/training/<job>/, models/<job>/   training jobs and their models
    <root>/<repo>/eval/holdout.json                held-out start functions (`eval.count`), kept for every later run
    <root>/<repo>/eval/tasks/<id>.json             evaluation tasks made of held-out instances, by every run
    <root>/<repo>/eval/guides/<commit>.md          the repository guide (AGENTS.md) of a commit, for `base+guide`
    <root>/<repo>/evals/<run>/                     an evaluation run: plan.json, report.json, report.md, report.png,
                                                   <model>/results/<task>.s<seed>.json, <model>/results.jsonl,
                                                   <model>/summary.json, <model>/error.json; evals/latest.json

A file's presence means its step is done, so a retried or cleared task redoes only what is missing.

`root` is a local path or an object-storage URL (`s3://bucket/prefix`, `gs://…`) as a `upath.UPath`, which
Airflow's `ObjectStoragePath` (credentials from a connection) is one of. Writes are atomic either way: locally a temp
file, fsync and rename; remotely one PUT of the whole object, so readers never see half a file. What must be on a
local disk (git clones, snapshots, build locks) goes under `local_cache` when the root is remote.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sera_ops.records import (
    Duplicate,
    EvalTask,
    InstanceError,
    NotStarted,
    Rollout,
    RolloutOne,
    Synthesis,
    Verdict,
    from_stored,
)
from sera_ops.store.io import (
    StorePath,
    atomic_write_json,
    default_local_cache,
    is_local,
    read_json,
    read_json_or,
    store_root,
)

COMMITS, MANIFEST, MIRROR = "commits.json", "manifest.json", "mirror.json"
INSTANCES, BATCHES, FINGERPRINTS = "instances.json", "batches.json", "fingerprints.json"
ROLLOUT_ONE, SYNTH, ROLLOUT_TWO, VERDICT = "rollout1.json", "synth.json", "rollout2.json", "verdict.json"
DUPLICATE, NOT_STARTED, ROLLOUT_TWO_TRAJECTORY = "duplicate.json", "not_started.json", "rollout2.traj.json"
STATS, CARD, CURATION = "stats.json", "README.md", "curation.json"
LATEST, DEMO_ISSUES, BLOBS = "latest.json", "demo_issues.json", "blobs.json"
TRAINING_JOB, TRAINING_SETTINGS = "job.json", "job_settings.json"
HOLDOUT, EVAL_PLAN, RESULTS, SUMMARY = "holdout.json", "plan.json", "results.jsonl", "summary.json"
REPORT, REPORT_TEXT, REPORT_PLOT, GUIDE = "report.json", "report.md", "report.png", "AGENTS.md"
MODEL_METRICS = "metrics.json"
ERROR_SUFFIX, JSON_SUFFIX = ".error.json", ".json"
SPLITS = ("t1", "t2")
PLOT_KINDS = ("funnel", "recall", "turns", "tokens", "commits")
PLOTS = tuple(f"{kind}.png" for kind in PLOT_KINDS)
"""The dataset's plot files, the funnel first."""
_ATTEMPT_TRAJECTORY = re.compile(r"rollout1\.a(\d+)\.traj\.json")
FILE_NAMES = (COMMITS, MANIFEST, MIRROR, INSTANCES, BATCHES, FINGERPRINTS, ROLLOUT_ONE, SYNTH, ROLLOUT_TWO, VERDICT,
              DUPLICATE, NOT_STARTED, ROLLOUT_TWO_TRAJECTORY, STATS, CARD, CURATION, LATEST, DEMO_ISSUES, BLOBS,
              TRAINING_JOB, TRAINING_SETTINGS, HOLDOUT, EVAL_PLAN, RESULTS, SUMMARY, REPORT, REPORT_TEXT, REPORT_PLOT,
              GUIDE, MODEL_METRICS,
              *(f"{split}.{kind}" for split in SPLITS for kind in ("jsonl", "parquet")), *PLOTS)
"""Every fixed file name of the store (tests check that no other module spells one)."""


def safe_name(value: str) -> str:
    """A run id like 'manual__2026-11-25T07:00:00+00:00' as a portable directory name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", value).strip("._")
    if not cleaned:
        raise ValueError(f"cannot make a directory name from {value!r}")
    return cleaned


class DatasetFiles:
    """The files of one dataset folder: a run's `dataset/`, or a curated copy anywhere."""

    def __init__(self, directory: StorePath):
        self.dir = directory

    def split(self, name: str) -> StorePath:
        return self.dir / f"{name}.jsonl"

    def parquet(self, name: str) -> StorePath:
        return self.dir / f"{name}.parquet"

    def plot(self, kind: str) -> StorePath:
        return self.dir / f"{kind}.png"

    @property
    def stats(self) -> StorePath:
        return self.dir / STATS

    @property
    def card(self) -> StorePath:
        return self.dir / CARD

    @property
    def curation(self) -> StorePath:
        return self.dir / CURATION

    @property
    def published(self) -> tuple[StorePath, ...]:
        """What a published dataset consists of (`push_dataset` uploads these): not curation or temp files."""
        names = (CARD, STATS, *(f"{s}.{kind}" for s in SPLITS for kind in ("jsonl", "parquet")), *PLOTS)
        return tuple(self.dir / name for name in names)


class InstanceFiles:
    """The files of one instance of a run."""

    def __init__(self, directory: StorePath):
        self.dir = directory

    @property
    def rollout_one(self) -> StorePath:
        return self.dir / ROLLOUT_ONE

    @property
    def synth(self) -> StorePath:
        return self.dir / SYNTH

    @property
    def rollout_two(self) -> StorePath:
        return self.dir / ROLLOUT_TWO

    @property
    def verdict(self) -> StorePath:
        return self.dir / VERDICT

    @property
    def duplicate(self) -> StorePath:
        return self.dir / DUPLICATE

    @property
    def not_started(self) -> StorePath:
        return self.dir / NOT_STARTED

    @property
    def rollout_two_trajectory(self) -> StorePath:
        return self.dir / ROLLOUT_TWO_TRAJECTORY

    def error(self, stage: str) -> StorePath:
        return self.dir / f"{stage}{ERROR_SUFFIX}"

    def attempt_trajectory(self, attempt: int) -> StorePath:
        return self.dir / f"rollout1.a{attempt}.traj.json"

    def trajectory(self, name: str) -> StorePath:
        """A trajectory by the file name its rollout recorded (`Rollout.trajectory_file`)."""
        return self.dir / name

    def attempt_trajectories(self) -> list[StorePath]:
        """Rollout one's attempt trajectories that exist, in attempt order."""
        found = [(int(m.group(1)), p) for p in self.dir.glob("rollout1.a*.traj.json")
                 if (m := _ATTEMPT_TRAJECTORY.fullmatch(p.name))] if self.dir.exists() else []
        return [path for _, path in sorted(found)]


class RepoStore:
    """One repository's part of the store: its runs, caches, published datasets and training jobs."""

    def __init__(self, root: str | StorePath, repo: str, local_cache: Path | None = None):
        self.root = store_root(root)
        self.repo = repo
        self.dir = self.root / safe_name(repo)
        cache = Path(local_cache or default_local_cache()) / safe_name(repo)
        self.local_dir = self.dir if is_local(self.root) else cache
        """Where what must be on a local disk goes: beside the store when it is local, else a worker-local cache."""
        self._local_cache = local_cache

    @property
    def is_remote(self) -> bool:
        return not is_local(self.root)

    def run(self, run_id: str) -> RunStore:
        return RunStore(self.root, self.repo, run_id, local_cache=self._local_cache)

    @property
    def runs_dir(self) -> StorePath:
        return self.dir / "runs"

    def run_names(self) -> list[str]:
        """The directory names of the repository's runs, sorted."""
        if not self.runs_dir.is_dir():
            return []
        return sorted(p.name for p in self.runs_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    # worker-local

    @property
    def sources_dir(self) -> Path:
        return self.local_dir / "sources"

    def snapshot_dir(self, commit: str) -> Path:
        """A plain checkout of one commit, shared by runs (used for inventory and the local sandbox)."""
        return self.local_dir / "cache" / "snapshots" / safe_name(commit)

    def snapshot_marker(self, key: str) -> Path:
        """Beside an image source's snapshot: which image it was copied from."""
        snapshot = self.snapshot_dir(key)
        return snapshot.with_name(f"{snapshot.name}.image{JSON_SUFFIX}")

    @property
    def locks_dir(self) -> Path:
        return self.local_dir / "cache" / "locks"

    @property
    def blob_cache(self) -> Path:
        """Parsed definitions per git blob: a worker's speed-up for inventories, not a result."""
        return self.local_dir / "cache" / "inventory" / BLOBS

    # in the store

    def inventory_path(self, commit: str) -> StorePath:
        return self.dir / "cache" / "inventory" / f"{safe_name(commit)}{JSON_SUFFIX}"

    @property
    def demo_issues_cache(self) -> StorePath:
        return self.dir / "cache" / DEMO_ISSUES

    @property
    def published_dir(self) -> StorePath:
        """One pointer file per published run, and `latest.json`: what training uses unless told otherwise."""
        return self.dir / "datasets"

    @property
    def latest_dataset(self) -> StorePath:
        return self.published_dir / LATEST

    def published_pointer(self, run_id: str) -> StorePath:
        return self.published_dir / f"{safe_name(run_id)}{JSON_SUFFIX}"

    def latest(self) -> dict | None:
        """The pointer of the latest published dataset ({repo, run_id, dataset_dir, records, published_at})."""
        return read_json_or(self.latest_dataset)

    @property
    def models_dir(self) -> StorePath:
        return self.dir / "models"

    def model_dir(self, job: str) -> StorePath:
        return self.models_dir / safe_name(job)

    def training_dir(self, job: str) -> StorePath:
        return self.dir / "training" / safe_name(job)

    def training_job_file(self, job: str) -> StorePath:
        """The job record: data files, output dir, settings file (what the pod was asked to do)."""
        return self.training_dir(job) / TRAINING_JOB

    def training_settings_file(self, job: str) -> StorePath:
        return self.training_dir(job) / TRAINING_SETTINGS

    def model_card(self, job: str) -> StorePath:
        """The model's README.md (the card transformers or peft wrote, with the evaluation table added)."""
        return self.model_dir(job) / CARD

    def latest_model(self) -> StorePath | None:
        """The newest complete model (its `metrics.json`, written last, is there), or None before any training."""
        if not self.models_dir.exists():
            return None
        done = [d for d in self.models_dir.iterdir() if (d / MODEL_METRICS).exists()]
        return max(done, key=lambda d: ((d / MODEL_METRICS).stat().st_mtime, d.name), default=None)

    @property
    def eval_dir(self) -> StorePath:
        return self.dir / "eval"

    @property
    def holdout(self) -> StorePath:
        return self.eval_dir / HOLDOUT

    @property
    def tasks_dir(self) -> StorePath:
        return self.eval_dir / "tasks"

    def task(self, task_id: str) -> StorePath:
        return self.tasks_dir / f"{safe_name(task_id)}{JSON_SUFFIX}"

    def tasks(self) -> list[EvalTask]:
        """Every evaluation task any run of the repository made, by id."""
        if not self.tasks_dir.exists():
            return []
        found = [EvalTask.from_dict(read_json(path)) for path in self.tasks_dir.iterdir()
                 if path.name.endswith(JSON_SUFFIX)]
        return sorted(found, key=lambda task: task.task_id)

    def guide(self, commit: str) -> StorePath:
        return self.eval_dir / "guides" / safe_name(commit) / GUIDE

    @property
    def evals_dir(self) -> StorePath:
        return self.dir / "evals"

    def evaluation(self, run_id: str) -> EvalRunFiles:
        return EvalRunFiles(self.evals_dir / safe_name(run_id))

    @property
    def latest_evaluation(self) -> StorePath:
        return self.evals_dir / LATEST


class EvalRunFiles:
    """One evaluation run: its plan, one result file per model, task and seed, and the report."""

    def __init__(self, directory: StorePath):
        self.dir = directory

    @property
    def plan(self) -> StorePath:
        return self.dir / EVAL_PLAN

    def model_dir(self, model: str) -> StorePath:
        return self.dir / safe_name(model)

    def result(self, model: str, task_id: str, seed: int) -> StorePath:
        return self.model_dir(model) / "results" / f"{safe_name(task_id)}.s{seed}{JSON_SUFFIX}"

    def trajectory(self, model: str, task_id: str, seed: int) -> StorePath:
        return self.model_dir(model) / "trajectories" / f"{safe_name(task_id)}.s{seed}.traj{JSON_SUFFIX}"

    def results(self, model: str) -> StorePath:
        return self.model_dir(model) / RESULTS

    def summary(self, model: str) -> StorePath:
        return self.model_dir(model) / SUMMARY

    def error(self, model: str) -> StorePath:
        return self.model_dir(model) / f"model{ERROR_SUFFIX}"

    @property
    def report(self) -> StorePath:
        return self.dir / REPORT

    @property
    def report_text(self) -> StorePath:
        return self.dir / REPORT_TEXT

    @property
    def report_plot(self) -> StorePath:
        return self.dir / REPORT_PLOT


class RunStore:
    """One run of one repository: named, typed accessors for every file of the run."""

    def __init__(self, root: str | StorePath, repo: str, run_id: str, local_cache: Path | None = None):
        self.repo_store = RepoStore(root, repo, local_cache)
        self.root = self.repo_store.root
        self.repo = repo
        self.run_id = run_id
        self.repo_dir = self.repo_store.dir
        self.run_dir = self.repo_store.runs_dir / safe_name(run_id)

    @property
    def name(self) -> str:
        """The run's directory name (what the viewer and the published pointers call it)."""
        return self.run_dir.name

    # run-level files

    @property
    def commits(self) -> StorePath:
        return self.run_dir / COMMITS

    @property
    def manifest(self) -> StorePath:
        return self.run_dir / MANIFEST

    @property
    def mirror(self) -> StorePath:
        return self.run_dir / MIRROR

    @property
    def instances(self) -> StorePath:
        return self.run_dir / INSTANCES

    @property
    def batches(self) -> StorePath:
        return self.run_dir / BATCHES

    @property
    def fingerprints(self) -> StorePath:
        return self.run_dir / FINGERPRINTS

    @property
    def spend_dir(self) -> StorePath:
        return self.run_dir / "spend"

    def image(self, commit: str) -> StorePath:
        return self.run_dir / "images" / f"{safe_name(commit)}{JSON_SUFFIX}"

    def image_error(self, commit: str) -> StorePath:
        return self.run_dir / "images" / f"{safe_name(commit)}{ERROR_SUFFIX}"

    def move(self, batch_id: str) -> StorePath:
        return self.run_dir / "moves" / f"{safe_name(batch_id)}{JSON_SUFFIX}"

    def patch_claim(self, fingerprint: str) -> StorePath:
        return self.run_dir / "patches" / f"{safe_name(fingerprint)}.owner"

    @property
    def dataset(self) -> DatasetFiles:
        return DatasetFiles(self.run_dir / "dataset")

    @property
    def dataset_dir(self) -> StorePath:
        return self.dataset.dir

    def instance(self, instance_id: str) -> InstanceFiles:
        return InstanceFiles(self.run_dir / "instances" / safe_name(instance_id))

    # plain JSON

    def write_json(self, path: StorePath, data: Any) -> None:
        atomic_write_json(path, data)

    def read_json(self, path: StorePath, default: Any = None) -> Any:
        return read_json_or(path, default)

    # typed per-instance records

    def rollout_one(self, instance_id: str) -> RolloutOne | None:
        data = read_json_or(self.instance(instance_id).rollout_one)
        return RolloutOne.from_dict(data) if data else None

    def write_rollout_one(self, instance_id: str, record: RolloutOne) -> None:
        atomic_write_json(self.instance(instance_id).rollout_one, record.to_dict())

    def synth(self, instance_id: str) -> Synthesis | None:
        from sera_ops.records import Synthesis  # synth reaches this module through teachers' spend ledger

        data = read_json_or(self.instance(instance_id).synth)
        return Synthesis.from_dict(data) if data is not None else None

    def write_synth(self, instance_id: str, record: Synthesis) -> None:
        atomic_write_json(self.instance(instance_id).synth, record.to_dict())

    def rollout_two(self, instance_id: str) -> Rollout | None:
        data = read_json_or(self.instance(instance_id).rollout_two)
        return Rollout.from_dict(data) if data else None

    def write_rollout_two(self, instance_id: str, rollout: Rollout) -> None:
        atomic_write_json(self.instance(instance_id).rollout_two, rollout.to_dict())

    def verdict(self, instance_id: str) -> Verdict | None:
        data = read_json_or(self.instance(instance_id).verdict)
        return from_stored(Verdict, data) if data is not None else None

    def write_verdict(self, instance_id: str, verdict: Verdict) -> None:
        atomic_write_json(self.instance(instance_id).verdict, verdict.to_dict())

    def error(self, instance_id: str, stage: str) -> InstanceError | None:
        data = read_json_or(self.instance(instance_id).error(stage))
        return from_stored(InstanceError, data) if data is not None else None

    def write_error(self, instance_id: str, error: InstanceError) -> None:
        atomic_write_json(self.instance(instance_id).error(error.stage), asdict(error))

    def clear_error(self, instance_id: str, stage: str) -> None:
        self.instance(instance_id).error(stage).unlink(missing_ok=True)

    def duplicate(self, instance_id: str) -> Duplicate | None:
        data = read_json_or(self.instance(instance_id).duplicate)
        return from_stored(Duplicate, data) if data is not None else None

    def write_duplicate(self, instance_id: str, duplicate: Duplicate) -> None:
        atomic_write_json(self.instance(instance_id).duplicate, asdict(duplicate))

    def not_started(self, instance_id: str) -> NotStarted | None:
        data = read_json_or(self.instance(instance_id).not_started)
        return from_stored(NotStarted, data) if data is not None else None

    def write_not_started(self, instance_id: str, record: NotStarted) -> None:
        atomic_write_json(self.instance(instance_id).not_started, asdict(record))

    def clear_not_started(self, instance_id: str) -> None:
        self.instance(instance_id).not_started.unlink(missing_ok=True)

    def trajectory(self, instance_id: str, name: str) -> dict:
        """A trajectory of the instance by the file name its rollout recorded."""
        return read_json(self.instance(instance_id).trajectory(name))

    def instance_records(self) -> list[dict]:
        """instances.json: the sampled instances (as `records.Instance` dicts); empty before `sample`."""
        return read_json_or(self.instances, [])
