"""Live Airflow: api-server + scheduler + dag-processor on loopback (tests/live_stack.py), driven over the REST API
the way CI jobs and the web UI drive it — `sera trigger` with conf (a bad conf refused, a good one waited for), the
dataset Asset scheduling training, and clearing a batch task that then redoes nothing."""
import json
import re
import subprocess
import sys
import urllib.request

import pytest

from sera_ops.store.layout import RunStore
from sera_ops.testing.dry_run import dry_run_platform
from sera_ops.testing.scripted_teacher import ScriptedTeacher
from tests.support import ROOT, docker_engine_reachable
from tests.support.live_stack import DAG, TRAINING_DAG, Api, LiveStack, live_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    work = tmp_path_factory.mktemp("live")
    with ScriptedTeacher() as teacher:
        platform = dry_run_platform(ROOT / "config" / "platform.yaml", work, teacher.url,
                                    storage_root=work / "store",
                                    overrides={"images": {"sandbox": "auto" if docker_engine_reachable() else "local"}})
        with live_stack(work, platform) as stack:
            yield stack


def sera_trigger(api: Api, *args: str) -> subprocess.CompletedProcess:
    """`sera trigger tinyledger` against the live API server (all users are admins: no credentials needed)."""
    return subprocess.run([sys.executable, "-m", "sera_ops.cli", "trigger", "tinyledger", "--api-url", api.base, *args],
                          capture_output=True, text=True, timeout=600)


def test_cli_trigger_refuses_a_bad_conf(live: LiveStack):
    refused = sera_trigger(live.api, "--conf", '{"threshold": 3}')
    assert refused.returncode == 2 and "HTTP 400" in refused.stderr and "threshold" in refused.stderr, refused.stderr


def test_trigger_wait_train_and_clear(live: LiveStack):
    api, work = live.api, live.work
    done = sera_trigger(api, "--conf", '{"max_functions": 3, "threshold": 0.5}', "--wait", "--poll", "1",
                        "--timeout", "300")
    assert done.returncode == 0 and "state          success" in done.stdout, done.stdout + done.stderr
    run_id = re.search(rf"^triggered {DAG} run (\S+)$", done.stdout, re.MULTILINE).group(1)

    dataset = next((work / "store" / "tinyledger" / "runs").iterdir()) / "dataset"
    stats = json.loads((dataset / "stats.json").read_text())
    assert stats["instances"] == 3 and stats["threshold"] == 0.5 and stats["records"]["t1"] > 0
    assert f"dataset: {dataset}" in done.stdout

    # publishing the dataset updated its Asset, which schedules the training DAG
    training = api.wait_for(lambda: api.call("GET", f"/api/v2/dags/{TRAINING_DAG}/dagRuns")[1]["dag_runs"], 60,
                            "the dataset Asset to trigger training")
    assert training[0]["run_type"] == "asset_triggered"
    training_id = training[0]["dag_run_id"]
    assert api.finish(training_id, 300, TRAINING_DAG) == "success"
    assert list((work / "store" / "tinyledger" / "models").glob("*/metrics.json"))

    status, body = api.call("POST", f"/api/v2/dags/{DAG}/clearTaskInstances", {
        "dry_run": False, "dag_run_id": run_id, "task_ids": [["per_batch.rollouts", 0]],
        "only_failed": False, "include_downstream": True, "reset_dag_runs": True})
    assert status == 200 and {t["task_id"] for t in body["task_instances"]} >= {"per_batch.rollouts", "assemble"}
    api.wait_for(lambda: api.task_instance(run_id, "assemble")["try_number"] == 2 and api.run_state(run_id), 180,
                 "the cleared tasks to run again")
    log = api.task_instance(run_id, "per_batch.rollouts", 0)
    assert log["state"] == "success" and log["try_number"] == 2 and log["pool"] == "sera_model_scripted"
    run_files = RunStore(work / "store", "tinyledger", run_id)
    first_batch = next(iter(run_files.read_json(run_files.batches).values()))["instances"]
    done_before = len(first_batch)  # the 3 training instances and the held-out one (the sample's eval:)
    assert f"'rollout1': {{'already_done': {done_before}, 'ran': 0," in live.log(run_id, "per_batch.rollouts", 0, 2)
    assert json.loads((dataset / "stats.json").read_text())["records"] == stats["records"]

    with urllib.request.urlopen(f"{api.base}/sera/tinyledger/{dataset.parent.name}", timeout=30) as response:
        page = response.read().decode()
    assert response.status == 200 and "tinyledger" in page and "recall" in page.lower()
