"""A live Airflow for tests: api-server, scheduler and dag-processor on loopback (LocalExecutor, SQLite), each its own
process that the test starts and stops by PID, driven over the REST API v2 the way CI jobs and the web UI drive it.
With `workers`, the stack runs the CeleryExecutor instead: a private redis-server as the broker and one
`airflow celery worker` per worker, each with its own environment (its own Docker engine, say)."""
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil

from tests.support import ROOT

DAG = "sera__tinyledger"
TRAINING_DAG = "sera_train__tinyledger"
AIRFLOW = str(Path(sys.executable).parent / "airflow")
COMPONENTS = {"api-server": ["api-server"], "scheduler": ["scheduler", "--skip-serve-logs"],
              "dag-processor": ["dag-processor"]}
WORKER_NAME_ENV = "SERA_LIVE_WORKER"
STOP_TIMEOUT_S = 30


def worker_hostname() -> str:
    """The `[core] hostname_callable` of a Celery worker in a live stack: its name, which Airflow records as the
    task instances' `hostname` (the workers share this machine, so its real hostname would not tell them apart)."""
    return os.environ[WORKER_NAME_ENV]


def free_port() -> int:
    """A loopback port nothing listens on (bound once to pick it, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def silent_port() -> Iterator[int]:
    """A loopback port whose connections the kernel accepts (the listen backlog) but nobody answers: a hung server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 1.0) -> Any:
    """The first truthy value of `predicate`, polled every `interval_s`; an unreachable server counts as falsy."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (urllib.error.URLError, ConnectionError, KeyError):
            value = None
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class Api:
    def __init__(self, base: str, login: tuple[str, str] | None = None):
        self.base, self.login = base, login
        self.token: str | None = None

    def authorization(self) -> dict[str, str]:
        """The bearer header for `login` (user, password), its token fetched on first use; none for all-admins."""
        if self.login and not self.token:
            body = json.dumps({"username": self.login[0], "password": self.login[1]}).encode()
            request = urllib.request.Request(f"{self.base}/auth/token", method="POST", data=body,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                self.token = json.load(response)["access_token"]
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        """One REST call; a 5xx (SQLite busy under a running task) is retried a few times, as a CI client would."""
        for attempt in range(5):
            request = urllib.request.Request(f"{self.base}{path}", method=method,
                                             data=json.dumps(body).encode() if body is not None else None,
                                             headers={"Content-Type": "application/json"} | self.authorization())
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return response.status, json.load(response)
            except urllib.error.HTTPError as error:
                if error.code < 500 or attempt == 4:
                    return error.code, json.load(error)
            time.sleep(2)
        raise AssertionError("unreachable")

    def wait_for(self, predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 1.0) -> Any:
        return wait_for(predicate, timeout_s, what, interval_s)

    def trigger(self, conf: dict, dag_id: str = DAG) -> str:
        status, body = self.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
        assert status == 200, body
        return body["dag_run_id"]

    def run(self, run_id: str, dag_id: str = DAG) -> dict:
        return self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")[1]

    def run_state(self, run_id: str, dag_id: str = DAG) -> str | None:
        state = self.run(run_id, dag_id)["state"]
        return state if state in ("success", "failed") else None

    def finish(self, run_id: str, timeout_s: float, dag_id: str = DAG) -> str:
        """The run's final state, once it has one."""
        return self.wait_for(lambda: self.run_state(run_id, dag_id), timeout_s, f"run {run_id} to finish")

    def task_instance(self, run_id: str, task_id: str, map_index: int | None = None, dag_id: str = DAG) -> dict:
        suffix = "" if map_index is None else f"/{map_index}"
        return self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}{suffix}")[1]


class LiveStack:
    """The components of one Airflow home, by name; a test may kill one (as a lost host would) and start it again."""

    def __init__(self, work: Path, env: dict[str, str], login: tuple[str, str] | None = None):
        self.work, self.env = work, env
        self.api = Api(env["AIRFLOW__API__BASE_URL"], login)
        self.commands = {name: ([AIRFLOW, *args], env) for name, args in COMPONENTS.items()}
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str) -> None:
        command, env = self.commands[name]
        with (self.work / f"{name}.log").open("a") as log:  # a restarted component appends to the same log
            self.processes[name] = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)

    def add_worker(self, name: str, concurrency: int = 2, **env: str) -> None:
        """Start a Celery worker `name` (a CeleryExecutor stack only) running at most `concurrency` tasks at once,
        with `env` added to the stack's environment, and wait until it takes tasks. Its task instances' `hostname`
        is `name`; its pid file, log server (none) and log are its own."""
        assert self.env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", "workers need a stack started with workers"
        self.commands[name] = ([AIRFLOW, "celery", "worker", "--celery-hostname", name, "--concurrency",
                                str(concurrency), "--skip-serve-logs", "--pid", str(self.work / f"{name}.pid"),
                                "--without-mingle", "--without-gossip"],
                               self.env | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                                       self.env.get("PYTHONPATH")])),
                                           "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.worker_hostname",
                                           WORKER_NAME_ENV: name} | env)
        self.start(name)
        log, process = self.work / f"{name}.log", self.processes[name]
        wait_for(lambda: f"@{name} ready." in log.read_text(errors="replace") or process.poll() is not None, 120,
                 f"Celery worker {name} to start")
        assert process.poll() is None, f"worker {name} exited:\n{log.read_text()[-3000:]}"

    def kill(self, name: str) -> int:
        """SIGKILL the component and every process it started (the scheduler's LocalExecutor workers, a Celery
        worker's pool processes, and the tasks they run), one PID at a time, as when its machine dies. Returns how
        many processes were killed."""
        process = self.processes.pop(name)
        tree = _tree(process)
        _kill(tree)
        process.wait()
        wait_for(lambda: not _alive(tree), 10, f"the processes of {name} to end after SIGKILL", 0.2)
        return len(tree)

    def log(self, run_id: str, task_id: str, map_index: int, attempt: int, dag_id: str = DAG) -> str:
        path = (Path(self.env["AIRFLOW_HOME"]) / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
                / f"map_index={map_index}" / f"attempt={attempt}.log")
        return path.read_text()

    def stop(self) -> None:
        """SIGTERM every component (a clean stop takes seconds); after 30 s, SIGKILL what is left of each one's
        process tree (a Celery worker's pool processes and the tasks they run included)."""
        trees = {name: _tree(process) for name, process in self.processes.items()}
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        _stop_trees(trees.values())
        for process in self.processes.values():
            process.wait()
        self.processes.clear()


def _tree(process: subprocess.Popen) -> list[psutil.Process]:
    """The process and all its descendants, while they are there to be found."""
    with suppress(psutil.NoSuchProcess):
        root = psutil.Process(process.pid)
        return [root, *root.children(recursive=True)]
    return []


def _kill(processes: list[psutil.Process]) -> None:
    for member in processes:
        with suppress(psutil.NoSuchProcess):
            member.kill()


def _stop_trees(trees: Iterable[list[psutil.Process]]) -> None:
    """Wait up to STOP_TIMEOUT_S for signalled process trees to end, then SIGKILL every member still there (with
    the children the survivors started meanwhile), so that nothing outlives the test."""
    members = [member for tree in trees for member in tree]
    with suppress(AssertionError):
        wait_for(lambda: not _alive(members), STOP_TIMEOUT_S, "processes to stop", 0.2)
    alive = _alive(members)
    for member in list(alive):
        with suppress(psutil.NoSuchProcess):
            alive += member.children(recursive=True)
    _kill(alive)
    wait_for(lambda: not _alive(alive), 10, "killed processes to end", 0.2)


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running: a zombie (ended, waiting for a parent that is gone to reap it) is not."""
    def running(process: psutil.Process) -> bool:
        try:
            return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    return [process for process in processes if running(process)]


@contextmanager
def redis_server(work: Path) -> Iterator[str]:
    """A private redis-server on a free loopback port, its directory in `work`, persisting nothing; yields its URL
    (database 0) and stops it when the block ends."""
    directory = work / "redis"
    directory.mkdir(exist_ok=True)
    port = free_port()
    with (work / "redis.log").open("a") as log:
        process = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir",
                                    str(directory), "--save", "", "--appendonly", "no"], stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _answers_ping(port) or process.poll() is not None, 30, "redis-server to start", 0.1)
        assert process.poll() is None, (work / "redis.log").read_text()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.send_signal(signal.SIGTERM)
        _stop_trees([_tree(process)])
        process.wait()


def _answers_ping(port: int) -> bool:
    with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")
    return False


@contextmanager
def live_stack(work: Path, platform: Path, login: tuple[str, str] | None = None,
               workers: Mapping[str, Mapping[str, str]] | None = None, **airflow_env: str) -> Iterator[LiveStack]:
    """A fresh Airflow home in `work` for the SERA DAGs of `platform` (its pools imported), running until the block
    ends; `airflow_env` adds settings (AIRFLOW__<SECTION>__<KEY>). Every caller is an admin without logging in,
    unless `login` (user, password) names the one admin, who must log in as in a deployment (`stack.api` does).
    With `workers` (name → environment added to the stack's, possibly empty) it runs the CeleryExecutor: a private
    redis-server is the broker, a SQLite file in `work` the result backend (the workers themselves reach the metadata
    DB only through the API server), and one Celery worker per entry is started (`stack.add_worker` starts more)."""
    if login:
        passwords = work / "passwords.json"
        passwords.write_text(json.dumps({login[0]: login[1]}))
        airflow_env = {"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                       "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{login[0]}:admin",
                       "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords)} | airflow_env
    resources = ExitStack()
    if workers is not None:
        broker = resources.enter_context(redis_server(work))
        airflow_env = {"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor", "AIRFLOW__CELERY__BROKER_URL": broker,
                       "AIRFLOW__CELERY__RESULT_BACKEND": f"db+sqlite:///{work / 'celery-results.db'}"} | airflow_env
    port = free_port()
    env = os.environ | {
        "AIRFLOW_HOME": str(work / "airflow"), "SERA_PLATFORM_CONFIG": str(platform),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor", "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
    } | airflow_env
    with resources:
        subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True)
        pools = work / "pools.json"  # the batch tasks' pools must exist, or the scheduler never queues them
        subprocess.run([sys.executable, "-m", "sera_ops.cli", "pools", "--out", str(pools)], env=env, check=True)
        subprocess.run([AIRFLOW, "pools", "import", str(pools)], env=env, check=True, capture_output=True)
        stack = LiveStack(work, env, login)
        try:
            for name in COMPONENTS:
                stack.start(name)
            for name, worker_env in (workers or {}).items():
                stack.add_worker(name, **worker_env)
            stack.api.wait_for(lambda: any(d["dag_id"] == DAG for d in stack.api.call("GET", "/api/v2/dags")[1]
                                           ["dags"]), 120, f"{DAG} to be parsed")
            yield stack
        finally:
            stack.stop()
