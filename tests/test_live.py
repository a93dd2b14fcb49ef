"""Live Airflow: api-server + scheduler + dag-processor on loopback, driven over the REST API the way CI jobs and the
web UI drive it — trigger with conf, a bad conf refused, poll, the dataset Asset scheduling training, and clearing a
batch task that then redoes nothing."""
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
from pathlib import Path

import pytest

from sera_ops.testing.dry_run import dry_run_platform
from sera_ops.testing.scripted_teacher import ScriptedTeacher
from tests.conftest import ROOT, docker_engine_reachable

pytestmark = pytest.mark.e2e
DAG = "sera__tinyledger"
TRAINING_DAG = "sera_train__tinyledger"
COMPONENTS = (["api-server"], ["scheduler", "--skip-serve-logs"], ["dag-processor"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Api:
    def __init__(self, base: str):
        self.base = base

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        """One REST call; a 5xx (SQLite busy under a running task) is retried a few times, as a CI client would."""
        for attempt in range(5):
            request = urllib.request.Request(f"{self.base}{path}", method=method,
                                             data=json.dumps(body).encode() if body is not None else None,
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return response.status, json.load(response)
            except urllib.error.HTTPError as error:
                if error.code < 500 or attempt == 4:
                    return error.code, json.load(error)
            time.sleep(2)
        raise AssertionError("unreachable")

    def wait_for(self, predicate, timeout_s: float, what: str):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                value = predicate()
            except (urllib.error.URLError, ConnectionError, KeyError):
                value = None
            if value:
                return value
            time.sleep(1)
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")

    def run_state(self, run_id: str, dag_id: str = DAG) -> str | None:
        state = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")[1]["state"]
        return state if state in ("success", "failed") else None


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    work = tmp_path_factory.mktemp("live")
    port = free_port()
    home = work / "airflow"
    with ScriptedTeacher() as teacher:
        platform = dry_run_platform(ROOT / "config" / "platform.yaml", work, teacher.url,
                                    storage_root=work / "store",
                                    overrides={"images": {"sandbox": "auto" if docker_engine_reachable() else "local"}})
        env = os.environ | {
            "AIRFLOW_HOME": str(home), "SERA_PLATFORM_CONFIG": str(platform),
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor", "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        }
        airflow = str(Path(sys.executable).parent / "airflow")
        subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
        pools = work / "pools.json"  # the batch tasks' pools must exist, or the scheduler never queues them
        subprocess.run([sys.executable, "-m", "sera_ops.cli", "pools", "--out", str(pools)], env=env, check=True)
        subprocess.run([airflow, "pools", "import", str(pools)], env=env, check=True, capture_output=True)
        processes = [subprocess.Popen([airflow, *args], env=env, stdout=(work / f"{args[0]}.log").open("w"),
                                      stderr=subprocess.STDOUT) for args in COMPONENTS]
        api = Api(f"http://127.0.0.1:{port}")
        try:
            api.wait_for(lambda: any(d["dag_id"] == DAG for d in api.call("GET", "/api/v2/dags")[1]["dags"]),
                         120, f"{DAG} to be parsed")
            yield api, work
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def test_rest_trigger_poll_and_clear(live):
    api, work = live
    status, body = api.call("POST", f"/api/v2/dags/{DAG}/dagRuns", {"logical_date": None, "conf": {"threshold": 3}})
    assert status == 400 and "threshold" in body["detail"]

    status, body = api.call("POST", f"/api/v2/dags/{DAG}/dagRuns",
                            {"logical_date": None, "conf": {"max_functions": 3, "threshold": 0.5}})
    assert status == 200, body
    run_id = body["dag_run_id"]
    assert api.wait_for(lambda: api.run_state(run_id), 300, "the run to finish") == "success"

    dataset = next((work / "store" / "tinyledger" / "runs").iterdir()) / "dataset"
    stats = json.loads((dataset / "stats.json").read_text())
    assert stats["instances"] == 3 and stats["threshold"] == 0.5 and stats["records"]["t1"] > 0

    # publishing the dataset updated its Asset, which schedules the training DAG
    training = api.wait_for(lambda: api.call("GET", f"/api/v2/dags/{TRAINING_DAG}/dagRuns")[1]["dag_runs"], 60,
                            "the dataset Asset to trigger training")
    assert training[0]["run_type"] == "asset_triggered"
    training_id = training[0]["dag_run_id"]
    assert api.wait_for(lambda: api.run_state(training_id, TRAINING_DAG), 300, "training to finish") == "success"
    assert list((work / "store" / "tinyledger" / "models").glob("*/metrics.json"))

    status, body = api.call("POST", f"/api/v2/dags/{DAG}/clearTaskInstances", {
        "dry_run": False, "dag_run_id": run_id, "task_ids": [["per_batch.rollout_one", 0]],
        "only_failed": False, "include_downstream": True, "reset_dag_runs": True})
    assert status == 200 and {t["task_id"] for t in body["task_instances"]} >= {"per_batch.rollout_one", "assemble"}
    api.wait_for(lambda: api.call("GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/assemble")[1]
                 ["try_number"] == 2 and api.run_state(run_id), 180, "the cleared tasks to run again")
    log = api.call("GET", f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/per_batch.rollout_one/0")[1]
    assert log["state"] == "success" and log["try_number"] == 2 and log["pool"] == "sera_model_scripted"
    logs = list((work / "airflow" / "logs").rglob("task_id=per_batch.rollout_one/map_index=0/attempt=2.log"))
    assert logs and "'already_done': 3, 'ran': 0" in logs[0].read_text()
    assert json.loads((dataset / "stats.json").read_text())["records"] == stats["records"]

    with urllib.request.urlopen(f"{api.base}/sera/tinyledger/{dataset.parent.name}", timeout=30) as response:
        page = response.read().decode()
    assert response.status == 200 and "tinyledger" in page and "recall" in page.lower()
