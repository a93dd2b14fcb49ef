"""Live Airflow on the CeleryExecutor (tests/live_stack.py): a private redis-server as the broker and two Celery
workers, each with its own Docker engine, as two machines would have. The repository DAG's batch tasks spread over
both; a worker's engine pulls a commit image from the registry when it needs one (never builds it); the dataset is
the one a single worker makes; and a worker killed in the middle of a batch loses nothing once Airflow has found its
task dead (heartbeat timeout) and retried it on the other worker."""
import json
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sera_ops.testing.dry_run import dry_run_platform
from sera_ops.testing.scripted_teacher import ScriptedTeacher
from tests.support import ROOT
from tests.support.live_stack import DAG, LiveStack, live_stack, wait_for
from tests.support.parts import require

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.slow]
SERVICES = ROOT / "scripts" / "services.sh"
REGISTRY = "127.0.0.1:5000"
IMAGES = f"{REGISTRY}/sera/tinyledger"
BATCH_TASK = "per_batch.rollouts"
CONF = {"max_functions": 8}  # tests/data/celery/repos: batches of two, so four batch tasks
BATCHES = 4
SETTINGS = {
    # A task whose worker stopped heartbeating this long ago is failed, and retried (default 300 s) ...
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
    # ... as soon as the scheduler looks: every this many seconds (default 10 s).
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
}
# Fields of stats.json that vary between runs that made the same records: the run's id and where it lies, and the
# token count of the teacher's answers, which includes tool-call ids numbered by the teacher's request counter.
VARYING = {"run_id", "dataset_dir", "completion_tokens"}


def docker(host: str, *args: str) -> str:
    return subprocess.run(["docker", *args], env=os.environ | {"DOCKER_HOST": host}, capture_output=True, text=True,
                          check=True, timeout=300).stdout


def commit_images(host: str) -> dict[str, str]:
    """The engine's images of the sample's commits (tag → image id), as pulled from or pushed to the registry."""
    listed = docker(host, "images", "--no-trunc", "--format", "{{.Tag}} {{.ID}}", IMAGES)
    return dict(line.split() for line in listed.splitlines())


def registry_image_id(tag: str) -> str:
    """The id of the image the registry holds under `tag` (its config's digest, which is the image id)."""
    request = urllib.request.Request(f"http://{REGISTRY}/v2/sera/tinyledger/manifests/{tag}",
                                     headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["config"]["digest"]


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """The main engine (DOCKER_HOST, started by scripts/services.sh) and a second one started here next to it
    (`services.sh start-engine`, root only) with the same base image; the registry is the main one's."""
    require("docker")
    require("root-engine")
    primary = os.environ["DOCKER_HOST"]
    state = tmp_path_factory.mktemp("engine")
    env = os.environ | {"SERA_SERVICES_DIR": str(state),
                        "SERA_BASE_FROM": str(Path(primary.removeprefix("unix://")).parent)}
    try:
        subprocess.run([SERVICES, "start-engine"], env=env, check=True, timeout=300)
        yield primary, f"unix://{state}/docker.sock"
    finally:
        # the episodes of a killed worker's tasks may still be running there: stopping the engine would wait for them
        env["DOCKER_HOST"] = f"unix://{state}/docker.sock"
        subprocess.run("docker ps --all --quiet | xargs --no-run-if-empty docker rm --force --volumes", shell=True,
                       env=env, capture_output=True, timeout=120)
        subprocess.run([SERVICES, "stop"], env=env, timeout=120)
        if not [line for line in Path("/proc/mounts").read_text().splitlines() if f" {state}/" in line]:
            shutil.rmtree(state, ignore_errors=True)  # the engine's layers: hundreds of MB


@pytest.fixture(scope="module")
def live(tmp_path_factory, engines) -> Iterator[tuple[LiveStack, Path]]:
    """A CeleryExecutor stack with one worker (on the main engine) to begin with. A batch task runs two episodes at
    once (one request slot, two episodes per slot), so batches are of two instances; the model server's pool lets
    four batch tasks run at once, and a worker of concurrency two takes at most two: a run's four batches land on
    both workers."""
    work = tmp_path_factory.mktemp("live-celery")
    with ScriptedTeacher() as teacher:
        server = {"base_url": teacher.url, "model": "scripted-teacher", "concurrency": 1, "episodes_per_slot": 2,
                  "parallel_batches": 4}
        platform = dry_run_platform(ROOT / "config" / "platform.yaml", work, teacher.url, storage_root=work / "store",
                                    repos_dir=ROOT / "tests" / "data" / "celery" / "repos",
                                    overrides={"images": {"sandbox": "docker"},
                                               "defaults": {"retries": 2, "retry_delay_s": 1},
                                               "model_servers": {"scripted": server}})
        with live_stack(work, platform, workers={"worker-a": {"DOCKER_HOST": engines[0]}}, **SETTINGS) as stack:
            yield stack, work / "store"


def dataset(store: Path, run_id: str) -> dict:
    """The run's dataset as read from its files: records by instance id (each instance at most once), and stats."""
    stats = next(stats for path in store.glob("tinyledger/runs/*/dataset/stats.json")
                 if (stats := json.loads(path.read_text()))["run_id"] == run_id)
    directory = Path(stats["dataset_dir"])
    made = {"stats": without(stats, VARYING)}
    for name in ("t1", "t2"):
        records = [json.loads(line) for line in (directory / f"{name}.jsonl").read_text().splitlines()]
        made[name] = {record["instance_id"]: record for record in records}
        assert len(made[name]) == len(records), f"{name}.jsonl holds an instance twice"
    return made


def without(data: object, keys: set[str]) -> object:
    """`data` with `keys` left out of every mapping in it, however deep."""
    if isinstance(data, dict):
        return {key: without(value, keys) for key, value in data.items() if key not in keys}
    return data


def batch_tasks(stack: LiveStack, run_id: str) -> list[dict]:
    status, body = stack.api.call("GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances?limit=100")
    assert status == 200, body
    return sorted((ti for ti in body["task_instances"] if ti["task_id"] == BATCH_TASK), key=lambda ti: ti["map_index"])


def log_text(stack: LiveStack, run_id: str, map_index: int, attempt: int) -> str:
    """A batch task's log so far ('' before its first line)."""
    try:
        return stack.log(run_id, BATCH_TASK, map_index, attempt)
    except FileNotFoundError:
        return ""


@pytest.fixture(scope="module")
def reference(live) -> dict:
    """The dataset of a run on one worker (which builds the commit images, or finds them, and pushes them)."""
    stack, store = live
    run_id = stack.api.trigger(CONF)
    assert stack.api.finish(run_id, 420) == "success"
    assert {ti["hostname"] for ti in batch_tasks(stack, run_id)} == {"worker-a"}
    return dataset(store, run_id)


@pytest.fixture(scope="module")
def two_workers(live, engines, reference) -> LiveStack:
    """The stack after the one-worker run, with a second worker on the second engine, which has no commit image."""
    stack, _ = live
    assert commit_images(engines[1]) == {}
    stack.add_worker("worker-b", DOCKER_HOST=engines[1])
    return stack


def test_batches_spread_over_two_workers_that_pull_images_and_make_the_one_worker_dataset(live, engines, reference,
                                                                                          two_workers):
    stack, store = live
    run_id = stack.api.trigger(CONF)
    assert stack.api.finish(run_id, 420) == "success"
    batches = batch_tasks(stack, run_id)
    assert len(batches) == BATCHES and {ti["state"] for ti in batches} == {"success"}, batches
    assert {ti["hostname"] for ti in batches} == {"worker-a", "worker-b"}, batches

    pulled = commit_images(engines[1])
    assert pulled, "worker-b ran batches, but its engine has no commit image"
    assert all(image == registry_image_id(tag) for tag, image in pulled.items()), pulled  # pulled, not rebuilt
    assert not docker(engines[1], "images", "--all", "--quiet", "--filter", "dangling=true")  # no build steps
    assert not docker(engines[1], "images", "--quiet", f"{IMAGES}-deps")  # no dependency layer: nothing built

    assert dataset(store, run_id) == reference


def test_a_worker_killed_mid_batch_loses_nothing(live, reference, two_workers):
    """SIGKILL of worker-b's whole process tree (Celery's pool processes, the task supervisors and the tasks) once
    one of its batch tasks is past rollout one of an instance; the scheduler finds the task's heartbeat gone and
    worker-a retries it, redoing only what the killed try had not finished."""
    stack, store = live
    run_id = stack.api.trigger(CONF)

    def mid_batch() -> dict | None:
        """A batch task of worker-b past rollout one of an instance (its rollout two started), and not done."""
        for ti in batch_tasks(stack, run_id):
            if ti["hostname"] == "worker-b" and ti["state"] == "running":
                log = log_text(stack, run_id, ti["map_index"], 1)  # names each episode's container as it starts
                if "-r2-a0" in log and "Returned value" not in log:
                    return ti
        return None

    map_index = wait_for(mid_batch, 420, "a batch task of worker-b to be half done", 0.2)["map_index"]
    doomed = {ti["map_index"] for ti in batch_tasks(stack, run_id)
              if ti["hostname"] == "worker-b" and ti["state"] == "running"}
    assert stack.kill("worker-b") > 3  # the worker, its pool processes, the task supervisors and their tasks
    assert stack.api.finish(run_id, 420) == "success"

    retried = [ti for ti in batch_tasks(stack, run_id) if ti["map_index"] in doomed]
    assert all(ti["state"] == "success" and ti["try_number"] == 2 and ti["hostname"] == "worker-a"
               for ti in retried), retried
    assert re.search(r"'rollout1': \{'already_done': [1-9]", log_text(stack, run_id, map_index, 2))
    assert dataset(store, run_id) == reference  # every instance once, as on one worker

