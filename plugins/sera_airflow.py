"""Airflow adapters for sera_ops: secrets from Airflow connections, retries (fail fast on permanent errors), and the
plugin registration.

sera_ops never imports Airflow; it takes a `connection_lookup(conn_id) -> secret | None` callable, and this module is
the Airflow implementation of it (a connection's password field holds the secret: a model server's API key, a
registry password, a GitHub token). Connections can come from the metadata DB, a secrets backend, or
`AIRFLOW_CONN_<ID>` environment variables.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import ParamSpec, TypeVar

from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import Asset
from airflow.sdk.exceptions import AirflowFailException

from sera_ops.errors import is_permanent
from sera_ops.settings import PlatformConfig, RepoSpec, is_storage_url
from sera_ops.store.io import StorePath

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def connection_secret(conn_id: str) -> str | None:
    """The password of Airflow connection `conn_id`, or None when no such connection exists."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.sdk import BaseHook

    try:
        return BaseHook.get_connection(conn_id).password or None
    except AirflowNotFoundException:
        log.info("no Airflow connection '%s'; falling back to the environment variable, if configured", conn_id)
        return None


def storage_root(platform: PlatformConfig) -> StorePath:
    """The run store's root for tasks and the viewer: a local path as configured, or object storage as an
    `ObjectStoragePath` whose credentials come from the Airflow connection `storage_conn_id` (none: the backend's
    defaults, e.g. the AWS credential chain). Imported here: the SDK's path is only needed for remote roots."""
    if not is_storage_url(platform.storage_root):
        return platform.storage_root
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(platform.storage_root, conn_id=platform.storage_conn_id)


START = datetime(2026, 1, 1, tzinfo=UTC)


RETRY_BACKOFF = 2.0
"""Each retry waits about twice as long as the one before (Airflow's multiplier; `True` would mean 1, a constant
delay), so a teacher answering 429 or a registry restarting gets room, capped by `MAX_RETRY_DELAY`."""
MAX_RETRY_DELAY = timedelta(minutes=10)


def default_args(platform: PlatformConfig, owner: str | None) -> dict:
    """Every task of every SERA DAG: an owner, and retries with the platform's delay, backing off exponentially.
    Only transient errors use them: task bodies are wrapped in `fail_fast`."""
    delay = timedelta(seconds=platform.defaults.retry_delay_s)
    return {"owner": owner or platform.defaults.owner, "retries": max(1, platform.defaults.retries),
            "retry_delay": delay, "retry_exponential_backoff": RETRY_BACKOFF,
            "max_retry_delay": max(delay, MAX_RETRY_DELAY)}


def fail_fast(body: Callable[P, R]) -> Callable[P, R]:
    """Wrap a task body (under `@task`) so that an error retrying cannot fix (`sera_ops.errors.is_permanent`: a
    configuration, parameter, source or image that is wrong) fails the task at once with the original message,
    instead of repeating it on every retry; transient errors are raised as they are and retried."""

    @functools.wraps(body)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return body(*args, **kwargs)
        except Exception as exc:
            if not is_permanent(exc):
                raise
            raise AirflowFailException(f"{type(exc).__name__}: {exc} (permanent: not retried)") from exc

    return run


def dataset_asset(spec: RepoSpec) -> Asset:
    """The Asset a repository DAG's `publish` task updates; its training DAG is scheduled on it. Its identity is the
    repository's alone (not the store's path), so moving `storage_root` keeps the same Asset and its history; where
    the dataset lies is in the published pointer (`datasets/latest.json`)."""
    return Asset(name=f"sera_dataset__{spec.name}", uri=f"sera://datasets/{spec.name}")


def model_asset(spec: RepoSpec) -> Asset:
    """The Asset a training DAG's `train` task updates; the repository's evaluation DAG is scheduled on it."""
    return Asset(name=f"sera_model__{spec.name}", uri=f"sera://models/{spec.name}")


class SeraPlugin(AirflowPlugin):
    name = "sera"


def run_dag_locally(dag_id: str, conf: dict | None = None):
    """Run one DAG in this process with `dag.test()` (no scheduler): used by `make demo` and the end-to-end tests.

    Returns the finished DagRun. The DAG folder is parsed fresh, as the dag-processor would.
    """
    from airflow.configuration import conf as airflow_conf
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=airflow_conf.get("core", "dags_folder"))
    if dag_id not in bag.dags:
        known = ", ".join(sorted(bag.dags)) or "none"
        raise KeyError(f"DAG '{dag_id}' not found (loaded: {known}; import errors: {bag.import_errors or 'none'})")
    _retire_stale_assets(bag.dags[dag_id])
    return bag.dags[dag_id].test(run_conf=conf or {})


def _retire_stale_assets(dag) -> None:
    """Deactivate assets that share a name with one of this DAG's assets but not its URI (left by an earlier version
    of the DAG), so that ours can be activated. A scheduler does this on its own loop; `dag.test()` has none."""
    from airflow.models.asset import AssetActive
    from airflow.utils.session import create_session
    from sqlalchemy import and_, delete, or_

    condition = getattr(dag.timetable, "asset_condition", None)
    declared = [*(outlet for task in dag.tasks for outlet in task.outlets), *(condition.objects if condition else [])]
    assets = {(asset.name, asset.uri) for asset in declared if hasattr(asset, "uri")}
    if assets:
        with create_session() as session:
            session.execute(delete(AssetActive).where(or_(*(
                and_(AssetActive.name == name, AssetActive.uri != uri) for name, uri in assets))))


def training_pod(platform: PlatformConfig, spec: RepoSpec, *, arguments: str | list[str], outlets: list | None = None):
    """The `train` task for the kubernetes backend: `accelerate launch --num_processes <gpus> ... -m sera_ops.train
    <arguments>` (one training process per GPU, DDP or FSDP per the repository's `distributed`) in a pod that mounts
    the storage root at the same path (so the job's paths hold) and asks for the configured CPU, memory and GPUs.
    No secret is passed to the pod: training reads only the dataset and writes the model."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    from sera_ops.train.jobs import launcher_command

    settings = platform.training.kubernetes
    limits = {"cpu": settings.cpu, "memory": settings.memory}
    if settings.gpus:
        limits["nvidia.com/gpu"] = str(settings.gpus)
    volumes, mounts = [], []
    if settings.storage_claim:
        volumes.append(k8s.V1Volume(name="sera-store", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
            claim_name=settings.storage_claim)))
        mounts.append(k8s.V1VolumeMount(name="sera-store", mount_path=str(platform.storage_root)))
    if settings.gpus > 1:  # NCCL exchanges through /dev/shm, which a container gets only 64 MiB of
        volumes.append(k8s.V1Volume(name="shm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory")))
        mounts.append(k8s.V1VolumeMount(name="shm", mount_path="/dev/shm"))
    return KubernetesPodOperator(
        task_id="train", name=f"sera-train-{spec.name}", namespace=settings.namespace, image=settings.image,
        cmds=launcher_command(settings.gpus, spec.training.distributed), arguments=arguments,
        labels={"app": "sera-train", "repo": spec.name},
        container_resources=k8s.V1ResourceRequirements(requests=dict(limits), limits=limits),
        volumes=volumes, volume_mounts=mounts, node_selector=settings.node_selector or None,
        service_account_name=settings.service_account, startup_timeout_seconds=settings.startup_timeout_s,
        env_vars={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}, get_logs=True,
        on_finish_action="delete_pod", outlets=outlets or [])
