"""End to end: the repository DAG under `dag.test()` with real mini-swe-agent episodes in real containers (the local
sandbox when no engine is reachable and CI did not demand one), real HTTP to the scripted teacher, and one bad commit
that must fail on its own without taking the other commits down."""
import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest

from sera_ops.settings import load_platform
from sera_ops.sources.samples import build_sample_repo
from sera_ops.store.layout import RunStore
from sera_ops.testing.dry_run import dry_run_platform
from sera_ops.testing.local_github import LocalGitHub
from sera_ops.testing.scripted_teacher import ScriptedTeacher, ScriptedTeacherConfig
from tests.support import ROOT, docker_engine_reachable
from tests.support.parts import require

SECRET = "sk-sera-e2e-5f1c9a77d02b4e6f"
GITHUB_SECRET = "ghp_sera_e2e_9d3b71c04a5e"
ORG = "sera-mirrors"
BAD_COMMIT = "0000000bad"
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def run(tmp_path_factory, airflow_db):
    work = tmp_path_factory.mktemp("e2e")
    sample = build_sample_repo("tinyledger", work / "sample")
    history = subprocess.run(["git", "log", "--reverse", "--format=%H"], cwd=sample, capture_output=True, text=True,
                             check=True).stdout.split()
    use_docker = docker_engine_reachable()
    os.environ["SERA_SCRIPTED_API_KEY"] = SECRET
    os.environ["SERA_E2E_GITHUB_TOKEN"] = GITHUB_SECRET
    config = ScriptedTeacherConfig(api_key=SECRET, rollout_two_modes={"full": 0.7, "partial": 0.3})
    github = LocalGitHub(work / "github", [ORG], GITHUB_SECRET)
    with ScriptedTeacher(config) as teacher, github:
        platform_file = dry_run_platform(
            ROOT / "config" / "platform.yaml", work, teacher.url, storage_root=work / "store",
            overrides={"defaults": {"retries": 1, "retry_delay_s": 0},
                       "images": {"sandbox": "docker" if use_docker else "local"},
                       "github": {"api_url": github.url, "organisation": ORG,
                                  "token": {"connection": "github_default", "env": "SERA_E2E_GITHUB_TOKEN"}}})
        os.environ["SERA_PLATFORM_CONFIG"] = str(platform_file)
        from sera_airflow import run_dag_locally

        conf = {"commits": [history[0], history[-1], BAD_COMMIT], "max_functions": 6}
        dag_run = run_dag_locally("sera__tinyledger", conf)
        platform = load_platform(platform_file)
        store = RunStore(platform.storage_root, "tinyledger", dag_run.run_id)
        stats = json.loads((store.dataset_dir / "stats.json").read_text())
        yield {"dag_run": dag_run, "store": store, "stats": stats, "platform": platform, "docker": use_docker,
               "history": history, "teacher": teacher.stats, "platform_file": platform_file,
               "mirror": github.repo_path(ORG, "tinyledger"),
               "github_metadata": github.repository_metadata(ORG, "tinyledger")}
    os.environ.pop("SERA_PLATFORM_CONFIG")


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_succeeds_and_only_the_bad_commit_fails(run):
    dag_run = run["dag_run"]
    assert str(dag_run.state) == "success"
    states = {(ti.task_id, ti.map_index): str(ti.state) for ti in dag_run.get_task_instances()}
    assert states[("per_commit.build_image", 2)] == "failed"
    assert states[("per_commit.build_image", 0)] == states[("per_commit.build_image", 1)] == "success"
    assert run["stats"]["commits"] == {"selected": 3, "ready": 2, "failed": [BAD_COMMIT]}
    batches = [state for (task, _), state in states.items() if task == "per_batch.rollouts"]
    assert batches and set(batches) == {"success"}


def test_counts_match_stats(run):
    stats, dataset = run["stats"], run["store"].dataset_dir
    t1, t2 = jsonl(dataset / "t1.jsonl"), jsonl(dataset / "t2.jsonl")
    assert len(t1) == stats["records"]["t1"] > 0
    assert len(t2) == stats["records"]["t2"] > 0
    assert stats["instances"] == 6 and stats["rollout_one"] == 6
    assert stats["verified"] >= len(t2) and stats["judged_good"] >= len(t1)


def test_publish_points_latest_at_this_run(run):
    store = run["store"]
    latest = json.loads(store.repo_store.latest_dataset.read_text())
    assert latest["run_id"] == run["dag_run"].run_id and latest["dataset_dir"] == str(store.dataset_dir)
    assert latest["records"] == run["stats"]["records"]


def test_every_t2_instance_meets_the_threshold(run):
    store, threshold = run["store"], run["stats"]["threshold"]
    for record in jsonl(store.dataset_dir / "t2.jsonl"):
        verdict = json.loads(store.instance(record["instance_id"]).verdict.read_text())
        assert verdict["recall"] >= threshold and verdict["resolved"]


def test_synthetic_prs_leave_the_agent_to_find_the_file(run):
    store = run["store"]
    prs = {i["instance_id"]: (i["start_fn_file"], store.read_json(store.instance(i["instance_id"]).synth))
           for i in store.read_json(store.instances)}
    written = {iid: (path, synth["synth_pr"]) for iid, (path, synth) in prs.items() if synth and synth["synth_pr"]}
    assert written
    assert not [iid for iid, (path, pr) in written.items() if path in pr]


def test_roles_alternate_and_only_assistant_turns_train(run):
    for name in ("t1.jsonl", "t2.jsonl"):
        for record in jsonl(run["store"].dataset_dir / name):
            roles = [m["role"] for m in record["messages"]]
            assert roles[:3] == ["system", "user", "assistant"], roles
            assert all(a != b for a, b in zip(roles[1:], roles[2:], strict=False)), roles
            assert all(m["train"] == (m["role"] == "assistant") for m in record["messages"])
            assert record["tool_json"][0]["function"]["name"] == "bash"
            assert "<tool_call>" in record["messages"][2]["content"]


def test_no_secret_in_any_output_file(run):
    assert run["teacher"]["agent"] > 0  # the teacher demands the key, so every answered call carried it
    root = run["platform"].storage_root
    files = [p for p in root.rglob("*") if p.is_file() and ".git" not in p.parts]
    assert len(files) > 20
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
        assert GITHUB_SECRET.encode() not in path.read_bytes(), path


def test_repository_is_mirrored_privately_with_the_selected_commits(run):
    assert run["github_metadata"]["private"] is True
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)"], cwd=run["mirror"], capture_output=True,
                          text=True, check=True).stdout.split()
    assert "refs/heads/main" in refs
    assert {f"refs/sera/commits/{run['history'][0]}", f"refs/sera/commits/{run['history'][-1]}"} <= set(refs)
    mirrored = json.loads(run["store"].mirror.read_text())
    assert mirrored["full_name"] == f"{ORG}/tinyledger" and mirrored["private"]


def test_images_are_pushed_to_the_registry(run):
    if not run["docker"]:
        require("docker")
        pytest.fail("a Docker engine answers, but the run used the local sandbox")
    registry = run["platform"].registry.url
    with urllib.request.urlopen(f"http://{registry}/v2/sera/tinyledger/tags/list", timeout=10) as response:
        tags = json.load(response)["tags"]
    assert {run["history"][0][:12], run["history"][-1][:12]} <= set(tags)
    image = json.loads(run["store"].image(run['history'][0]).read_text())
    assert image["kind"] == "docker" and image["digest"].startswith("sha256:")


def test_training_dag_fine_tunes_on_the_published_dataset(run, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from sera_airflow import run_dag_locally

    training_run = run_dag_locally("sera_train__tinyledger", {"max_steps": 3})
    assert str(training_run.state) == "success"
    models = run["store"].repo_dir / "models"
    (model_dir,) = list(models.iterdir())
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["method"] == "lora" and metrics["examples"] > 0
    job = json.loads(next((run["store"].repo_dir / "training").rglob("job.json")).read_text())
    assert job["dataset_run_id"] == run["dag_run"].run_id


def test_an_incremental_rerun_with_nothing_new_succeeds_and_publishes_nothing(run):
    from sera_airflow import run_dag_locally

    conf = {"commits": [run["history"][0], run["history"][-1]], "incremental": True}
    rerun = run_dag_locally("sera__tinyledger", conf)
    assert str(rerun.state) == "success"
    states = {ti.task_id: str(ti.state) for ti in rerun.get_task_instances() if ti.map_index in (-1, 0)}
    assert states["assemble"] == "success" and states["publish"] == "skipped"
    stats = json.loads(RunStore(run["platform"].storage_root, "tinyledger", rerun.run_id).dataset_dir
                       .joinpath("stats.json").read_text())
    assert stats["instances"] == 0 and stats["commits"]["selected"] == 0
    latest = json.loads(run["store"].repo_store.latest_dataset.read_text())
    assert latest["run_id"] == run["dag_run"].run_id  # the empty run did not replace the published dataset
