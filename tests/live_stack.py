"""A live Airflow for tests: api-server, scheduler and dag-processor on loopback (LocalExecutor, SQLite), each its own
process that the test starts and stops by PID, driven over the REST API v2 the way CI jobs and the web UI drive it."""
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil

DAG = "sera__tinyledger"
TRAINING_DAG = "sera_train__tinyledger"
AIRFLOW = str(Path(sys.executable).parent / "airflow")
COMPONENTS = {"api-server": ["api-server"], "scheduler": ["scheduler", "--skip-serve-logs"],
              "dag-processor": ["dag-processor"]}


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
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str) -> None:
        with (self.work / f"{name}.log").open("a") as log:  # a restarted component appends to the same log
            self.processes[name] = subprocess.Popen([AIRFLOW, *COMPONENTS[name]], env=self.env, stdout=log,
                                                    stderr=subprocess.STDOUT)

    def kill(self, name: str) -> int:
        """SIGKILL the component and every process it started (the scheduler's LocalExecutor workers and the tasks
        they run), one PID at a time, as when its machine dies. Returns how many processes were killed."""
        process = self.processes.pop(name)
        root = psutil.Process(process.pid)
        tree = [root, *root.children(recursive=True)]
        for member in tree:
            with suppress(psutil.NoSuchProcess):
                member.kill()
        process.wait()
        assert not psutil.wait_procs(tree, timeout=10)[1], f"{name}: processes survived SIGKILL"
        return len(tree)

    def log(self, run_id: str, task_id: str, map_index: int, attempt: int, dag_id: str = DAG) -> str:
        path = (Path(self.env["AIRFLOW_HOME"]) / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
                / f"map_index={map_index}" / f"attempt={attempt}.log")
        return path.read_text()

    def stop(self) -> None:
        """SIGTERM every component (a clean stop takes seconds), SIGKILL what is still there after 30 s."""
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


@contextmanager
def live_stack(work: Path, platform: Path, login: tuple[str, str] | None = None,
               **airflow_env: str) -> Iterator[LiveStack]:
    """A fresh Airflow home in `work` for the SERA DAGs of `platform` (its pools imported), running until the block
    ends; `airflow_env` adds settings (AIRFLOW__<SECTION>__<KEY>). Every caller is an admin without logging in,
    unless `login` (user, password) names the one admin, who must log in as in a deployment (`stack.api` does)."""
    if login:
        passwords = work / "passwords.json"
        passwords.write_text(json.dumps({login[0]: login[1]}))
        airflow_env = {"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                       "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{login[0]}:admin",
                       "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords)} | airflow_env
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
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True)
    pools = work / "pools.json"  # the batch tasks' pools must exist, or the scheduler never queues them
    subprocess.run([sys.executable, "-m", "sera_ops.cli", "pools", "--out", str(pools)], env=env, check=True)
    subprocess.run([AIRFLOW, "pools", "import", str(pools)], env=env, check=True, capture_output=True)
    stack = LiveStack(work, env, login)
    try:
        for name in COMPONENTS:
            stack.start(name)
        stack.api.wait_for(lambda: any(d["dag_id"] == DAG for d in stack.api.call("GET", "/api/v2/dags")[1]["dags"]),
                           120, f"{DAG} to be parsed")
        yield stack
    finally:
        stack.stop()
