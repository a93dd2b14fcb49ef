"""Live Airflow under faults (tests/live_stack.py, local sandbox): a teacher that stalls, a model server that never
answers, a scheduler lost in the middle of rollouts, two runs of one repository requested at once. Whatever happens,
every sampled instance ends in exactly one place: its verdict, the judge's rejection, or an error with its reason."""
import json
import re
from datetime import datetime
from pathlib import Path

import pytest

from sera_ops.records import EVAL_SPLIT
from sera_ops.store import views
from sera_ops.store.layout import RunStore
from sera_ops.testing.dry_run import dry_run_platform
from sera_ops.testing.scripted_teacher import ScriptedTeacher, ScriptedTeacherConfig
from tests.support import ROOT
from tests.support.live_stack import TRAINING_DAG, live_stack, silent_port

pytestmark = pytest.mark.e2e
ROLLOUT_ONE = "per_batch.rollouts"
SILENT = {"timeout_s": 2, "max_retries": 9}
ORPHAN_SETTINGS = {
    # A new scheduler resets the tasks of a scheduler whose heartbeat is this old (default 30 s) ...
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "15",
    # ... when it looks for them: at start, then every this many seconds (default 300 s).
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "5",
}


def teacher_server(url: str, **settings) -> dict:
    return {"base_url": url, "model": "scripted-teacher", **settings}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """One stack for the module, with three model servers: `scripted` (two episodes at a time, so a batch's rollouts
    finish in waves), `stalling` (2% of requests never answered within its timeout, no client retries) and `silent`
    (accepts connections, never answers)."""
    work = tmp_path_factory.mktemp("live-resilience")
    stalls = ScriptedTeacherConfig(stall_rate=0.02, seed=4)  # seed 4 stalls requests 11 and 34 (and 76, ...)
    with ScriptedTeacher() as teacher, ScriptedTeacher(stalls) as stalling, silent_port() as port:
        platform = dry_run_platform(ROOT / "config" / "platform.yaml", work, teacher.url, storage_root=work / "store",
                                    overrides={"images": {"sandbox": "local"},
                                               "defaults": {"retries": 1, "retry_delay_s": 1},
                                               "model_servers": {
                                                   "scripted": teacher_server(teacher.url, concurrency=2),
                                                   "stalling": teacher_server(stalling.url, timeout_s=5, max_retries=0),
                                                   "silent": teacher_server(f"http://127.0.0.1:{port}/v1", **SILENT)}})
        with live_stack(work, platform, **ORPHAN_SETTINGS) as stack:
            # every published dataset would start a training run: test_live covers that, here it only takes the CPU
            stack.api.wait_for(lambda: stack.api.call("PATCH", f"/api/v2/dags/{TRAINING_DAG}", {"is_paused": True})[0]
                               == 200, 60, f"{TRAINING_DAG} to be parsed")
            yield stack, stalling, work / "store"


def run_dir(store: Path, run_id: str) -> Path:
    return RunStore(store, "tinyledger", run_id).run_dir


def accounted(store: Path, run_id: str) -> dict[str, str]:
    """Where each sampled training instance of the run ended. Fails on an instance found in two places or in none,
    on an instance written twice into the dataset, and on a held-out (evaluation) instance in the dataset; a held-out
    instance ends as an evaluation task (its synthetic PR) or in an error."""
    held_out = {record["instance_id"] for record in RunStore(store, "tinyledger", run_id).instance_records()
                if record.get("split") == EVAL_SPLIT}
    ended = {}
    for status in views.run_detail(store, "tinyledger", run_dir(store, run_id).name).instances:
        places = [f"{stage} error: {reason}" for stage, reason in status.errors.items()]
        if status.resolved is not None:
            places.append("verified" if status.resolved else "not verified")
        if status.judged_good is False:
            places.append("rejected by the judge")
        if status.instance_id in held_out and status.synthetic_pr and not places:
            places.append("held out for evaluation")
        assert len(places) == 1, f"{status.instance_id} ended in {places or 'no place'}"
        ended[status.instance_id] = places[0]
    trained = {instance: place for instance, place in ended.items() if instance not in held_out}
    for name in ("t1", "t2"):
        lines = (run_dir(store, run_id) / "dataset" / f"{name}.jsonl").read_text().splitlines()
        ids = [json.loads(line)["instance_id"] for line in lines]
        assert len(ids) == len(set(ids)) and set(ids) <= set(trained), f"{name}.jsonl: {ids}"
    return trained


def when(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def test_stalled_requests_time_out_and_no_instance_is_lost(live):
    stack, stalling, store = live
    run_id = stack.api.trigger({"model_server": "stalling", "max_functions": 4})
    assert stack.api.finish(run_id, 300) == "success"
    assert stalling.stats["stalls"] >= 1
    ended = accounted(store, run_id)
    assert len(ended) == 4
    failed = [place for place in ended.values() if "error" in place]
    assert len(failed) <= stalling.stats["stalls"], ended  # a stall costs at most its own instance
    assert all("Request timed out" in place for place in failed), failed


def test_a_silent_model_server_fails_its_batch_fast_naming_it(live):
    stack, _, store = live
    run_id = stack.api.trigger({"model_server": "silent", "max_functions": 2})
    assert stack.api.finish(run_id, 300) == "failed"
    ti = stack.api.task_instance(run_id, ROLLOUT_ONE, 0)
    assert ti["state"] == "failed" and ti["try_number"] == 2, ti
    retry_budget = SILENT["timeout_s"] * (SILENT["max_retries"] + 1)  # what each instance would have spent
    assert ti["duration"] < retry_budget, ti
    log = stack.log(run_id, ROLLOUT_ONE, 0, 1)
    assert "TeacherUnreachable" in log and re.search(r"model server 'silent' at http://127\.0\.0\.1:\d+/v1 did not "
                                                     rf"answer GET /models within {SILENT['timeout_s']} s", log)
    assert not list(run_dir(store, run_id).rglob("*.error.json"))  # no instance spent anything on it


def test_a_lost_scheduler_is_replaced_and_runs_keep_their_queue_and_store(live):
    """Two runs of the repository requested at once (max_active_runs=1: the second waits); the scheduler, with its
    workers and their tasks, dies in the middle of the first run's rollouts and a new one is started."""
    stack, _, store = live
    first, second = stack.api.trigger({"max_functions": 4}), stack.api.trigger({"max_functions": 2})
    run_files = RunStore(store, "tinyledger", first)

    def first_batch_half_done() -> bool:  # an instance of batch 0 (the one whose retry is checked) is through rollout 1
        batches = run_files.read_json(run_files.batches) or {}
        started = next(iter(batches.values()), {}).get("instances", [])
        return stack.api.task_instance(first, ROLLOUT_ONE, 0).get("state") == "running" and any(
            run_files.instance(instance).rollout_one.exists() for instance in started)

    stack.api.wait_for(first_batch_half_done, 300, "rollout one to be half done", 0.2)
    assert stack.api.run(second)["state"] == "queued"
    assert stack.kill("scheduler") > 1  # the scheduler, its LocalExecutor workers and the running task
    stack.start("scheduler")
    assert [stack.api.finish(run_id, 300) for run_id in (first, second)] == ["success", "success"]

    ti = stack.api.task_instance(first, ROLLOUT_ONE, 0)
    assert ti["state"] == "success" and ti["try_number"] == 2, ti  # reset by the new scheduler, then retried
    assert re.search(r"'already_done': [1-9]", stack.log(first, ROLLOUT_ONE, 0, 2))  # ... skipping finished ones
    assert "orphaned TaskInstances" in (stack.work / "scheduler.log").read_text()

    one, two = (stack.api.run(run_id) for run_id in (first, second))
    assert when(two["start_date"]) >= when(one["end_date"]), (one, two)
    assert run_dir(store, first) != run_dir(store, second)
    for run, run_id, sampled in ((one, first, 4), (two, second, 2)):
        directory = run_dir(store, run_id)
        assert json.loads((directory / "manifest.json").read_text())["run_id"] == run_id
        written = [path.stat().st_mtime for path in directory.rglob("*") if path.is_file()]
        assert when(run["start_date"]) <= min(written) and max(written) <= when(run["end_date"]), run_id
        ended = accounted(store, run_id)
        assert len(ended) == sampled and not [place for place in ended.values() if "error" in place], ended
