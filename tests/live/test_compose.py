"""docker-compose.yaml, started for real: the platform images built offline on the local base image
(scripts/build_platform_images.sh), the stack up under a project name of its own on free loopback ports (host
network), the sample repository's DAG triggered over REST v2 with the scripted teacher (the `scripted` profile), its
episodes run on the host's engine through the mounted socket, and the dataset read from the mounted storage dir.
The metadata database is PostgreSQL from the stack's own image (Debian's package, docker/postgres), as in production:
the `celery` profile cannot run on SQLite. The same again under the `celery` profile: Redis and two workers, which
must both register with the broker and run the DAG's tasks. Every stack is taken down with its volumes (`down -v`)."""
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT
from tests.support.live_stack import DAG, Api, free_port
from tests.support.parts import require

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.e2e]

COMPOSE_FILE = ROOT / "docker-compose.yaml"
STACK_CONFIG = ROOT / "config" / "compose"
CONTAINER_UID = 50000  # the Airflow image's user (docker/airflow/Dockerfile)


def compose_command() -> str:
    """Debian's docker-compose (1.29), which `make test` installs as root."""
    require("docker")
    require("docker-compose")
    command = shutil.which("docker-compose")
    assert command
    return command


@pytest.fixture(scope="module")
def images() -> str:
    """The stack's images, built once per module; the layer cache makes a rebuild with nothing changed quick."""
    command = compose_command()
    built = subprocess.run([str(ROOT / "scripts" / "build_platform_images.sh"), "airflow", "postgres", "redis"],
                           capture_output=True, text=True, timeout=1500)
    assert built.returncode == 0, built.stdout + built.stderr
    return command


@dataclass
class Stack:
    command: str
    project: str
    env: dict[str, str]
    storage: Path
    api: Api

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([self.command, "-f", str(COMPOSE_FILE), "-p", self.project, *args], env=self.env,
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout)

    def diagnostics(self) -> str:
        """What a failing assertion shows: the last lines each service logged."""
        return self.compose("logs", "--no-color", "--tail", "40").stdout[-12000:]


def stack_config(work: Path, storage: Path, teacher_port: int) -> Path:
    """config/compose with the test's storage dir (mounted at the same path) and teacher port."""
    config = work / "config"
    shutil.copytree(STACK_CONFIG, config)
    platform = yaml.safe_load((config / "platform.yaml").read_text())
    platform["storage_root"] = str(storage)
    platform["registry"]["url"] = os.environ.get("SERA_REGISTRY", platform["registry"]["url"])
    platform["model_servers"]["scripted"]["base_url"] = f"http://127.0.0.1:{teacher_port}/v1"
    (config / "platform.yaml").write_text(yaml.safe_dump(platform, sort_keys=False))
    return config


def docker_socket() -> Path:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    assert host.startswith("unix://"), f"the stack mounts the engine's unix socket; DOCKER_HOST is {host}"
    return Path(host.removeprefix("unix://"))


@contextmanager
def compose_stack(command: str, work: Path, *profiles: str, scale: dict[str, int] | None = None,
                  **settings: str) -> Iterator[Stack]:
    """The stack with `profiles` (plus `scripted`) up until the block ends, then down with its volumes. Secrets are
    fresh per stack; the `admin` password is the one the api-server generated."""
    from cryptography.fernet import Fernet

    storage = work / "store"
    storage.mkdir()
    storage.chmod(0o777)  # written by the containers' user, CONTAINER_UID
    ports = {name: free_port() for name in ("AIRFLOW_API_PORT", "SERA_POSTGRES_PORT", "SERA_REDIS_PORT",
                                            "SERA_TEACHER_PORT")}
    socket = docker_socket()
    env = os.environ | {name: str(port) for name, port in ports.items()} | {
        "POSTGRES_PASSWORD": secrets.token_hex(16), "AIRFLOW_JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW_FERNET_KEY": Fernet.generate_key().decode(), "REDIS_PASSWORD": secrets.token_hex(16),
        "DOCKER_SOCKET": str(socket), "DOCKER_GID": str(socket.stat().st_gid), "SERA_STORAGE_DIR": str(storage),
        "SERA_CONFIG_DIR": str(stack_config(work, storage, ports["SERA_TEACHER_PORT"])),
        "AIRFLOW_PARALLELISM": "4",
    } | settings
    project = f"sera-compose-{secrets.token_hex(4)}"
    stack = Stack(command, project, env, storage, Api(f"http://127.0.0.1:{ports['AIRFLOW_API_PORT']}"))
    up = ["--profile", "scripted", *(arg for profile in profiles for arg in ("--profile", profile))]
    scaling = [arg for service, count in (scale or {}).items() for arg in ("--scale", f"{service}={count}")]
    try:
        started = stack.compose(*up, "up", "-d", "--no-build", *scaling, timeout=600)
        assert started.returncode == 0, started.stdout + started.stderr + stack.diagnostics()
        try:
            stack.api.wait_for(lambda: healthy(stack.api), 240, "every Airflow component to report healthy")
        except AssertionError as error:
            raise AssertionError(f"{error}\n{stack.compose('ps').stdout}\n{stack.diagnostics()}") from None
        password = json.loads(stack.compose("exec", "-T", "api-server", "cat",
                                            "/opt/airflow/auth/passwords.json").stdout)["admin"]
        stack.api.login = ("admin", password)
        yield stack
    finally:
        down = stack.compose(*up, "down", "-v", "--remove-orphans", "--timeout", "20")
        assert down.returncode == 0, down.stdout + down.stderr


def healthy(api: Api) -> bool:
    status, body = api.call("GET", "/api/v2/monitor/health")
    return status == 200 and all(part.get("status") == "healthy" for part in body.values())


def run_sample_dag(stack: Stack, max_functions: int) -> Path:
    """Unpause the sample repository's DAG, trigger it over REST with `max_functions`, wait for success; returns
    the run's dataset dir in the mounted storage."""
    api = stack.api
    api.wait_for(lambda: any(d["dag_id"] == DAG for d in api.call("GET", "/api/v2/dags")[1]["dags"]), 180,
                 f"{DAG} to be parsed")
    status, body = api.call("PATCH", f"/api/v2/dags/{DAG}", {"is_paused": False})
    assert status == 200, body
    run_id = api.trigger({"max_functions": max_functions})
    state = api.finish(run_id, 480)
    if state != "success":
        tasks = api.call("GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances?limit=100")[1]
        summary = [(t["task_id"], t["map_index"], t["state"]) for t in tasks.get("task_instances", [])]
        raise AssertionError(f"run {run_id} ended {state}: {summary}\n{stack.diagnostics()}")
    datasets = list((stack.storage / "tinyledger" / "runs").glob("*/dataset"))
    assert len(datasets) == 1, datasets
    return datasets[0]


def records(dataset: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (dataset / name).read_text().splitlines() if line.strip()]


def test_local_executor_stack_runs_the_sample_dag(images: str, tmp_path: Path):
    started = time.monotonic()
    with compose_stack(images, tmp_path) as stack:
        up_s = time.monotonic() - started
        ps = stack.compose("ps").stdout
        assert "worker" not in ps and "redis" not in ps, ps  # the celery profile stays off
        dataset = run_sample_dag(stack, max_functions=2)
        stats = json.loads((dataset / "stats.json").read_text())
        t1 = records(dataset, "t1.jsonl")
        assert stats["instances"] == 2 and len(t1) == stats["records"]["t1"] > 0, stats
        assert all(record["messages"] for record in t1)
    print(f"\n[compose] LocalExecutor stack: up and healthy in {up_s:.0f} s, "
          f"whole test {time.monotonic() - started:.0f} s")


def test_celery_profile_runs_the_sample_dag_on_two_workers(images: str, tmp_path: Path):
    started = time.monotonic()
    with compose_stack(images, tmp_path, "celery", scale={"worker": 2}, AIRFLOW_EXECUTOR="CeleryExecutor") as stack:
        def both_workers_answer() -> bool:
            ping = stack.compose("exec", "-T", "--index", "1", "worker", "celery", "--app",
                                 "airflow.providers.celery.executors.celery_executor.app", "inspect", "ping")
            return ping.returncode == 0 and ping.stdout.count("pong") == 2

        stack.api.wait_for(both_workers_answer, 120, "both Celery workers to answer a ping through the broker")
        dataset = run_sample_dag(stack, max_functions=1)
        assert records(dataset, "t1.jsonl")
        worker_logs = stack.compose("logs", "--no-color", "worker").stdout
        assert DAG in worker_logs, worker_logs[-4000:]
    print(f"\n[compose] Celery stack (2 workers): whole test {time.monotonic() - started:.0f} s")
