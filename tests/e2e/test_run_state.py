"""Honest run state under `dag.test()`: a run that produced nothing usable ends failed at the task that found out,
naming why; errors retrying cannot fix fail their task after one try, transient ones keep their retries; failed
instances beside records are counted, not fatal. Local sandbox and the scripted teacher, so each run takes seconds."""
import json
import re
import threading
from pathlib import Path

import pytest
import requests
import yaml

from sera_ops.build import images
from sera_ops.build.existing import ImageSourceError
from sera_ops.errors import is_permanent
from sera_ops.pipeline import batches
from sera_ops.pipeline.context import BatchFailed, InvalidParam, RunFailed, SourceUnreachable
from sera_ops.rollouts.episode import EpisodeSpec
from sera_ops.settings import ConfigError, load_platform
from sera_ops.sources.repos import SourceError
from sera_ops.store.layout import RunStore
from sera_ops.testing.dry_run import dry_run_platform
from sera_ops.testing.scripted_teacher import ScriptedTeacher, ScriptedTeacherConfig
from tests.support import ROOT

pytestmark = pytest.mark.e2e
REPO = "runstate"
SMOKE_FAILURE = "smoke check failed: could not import tinyledger.ledger"


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, Path]:
    """One storage root and one repository (the bundled sample under its own name) for every run of this module: the
    dataset Asset is keyed by name and URI, so a second store, or a second DAG for `tinyledger` (test_e2e's), would
    leave `publish` an inactive Asset in the same metadata DB."""
    root = tmp_path_factory.mktemp("run-state")
    repos = root / "repos"
    repos.mkdir()
    sample = yaml.safe_load((ROOT / "config" / "repos" / "tinyledger.yaml").read_text())
    sample.pop("eval")  # every sampled instance trains: the counts below are of training instances
    (repos / f"{REPO}.yaml").write_text(yaml.safe_dump(sample))
    return {"store": root / "store", "repos": repos}


@pytest.fixture
def platform_file(tmp_path, monkeypatch, shared, airflow_db):
    """Write a dry-run platform (retries 2 with no delay, local sandbox, teacher calls not retried) for `teacher_url`
    and point the DAG folder at it; returns the platform file."""

    def write(teacher_url: str, repos_dir: Path | None = None) -> Path:
        path = dry_run_platform(ROOT / "config" / "platform.yaml", tmp_path, teacher_url,
                                storage_root=shared["store"], repos_dir=repos_dir or shared["repos"],
                                overrides={"defaults": {"retries": 2, "retry_delay_s": 0},
                                           "images": {"sandbox": "local"}})
        data = yaml.safe_load(path.read_text())
        data["model_servers"]["scripted"]["max_retries"] = 0
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        monkeypatch.setenv("SERA_PLATFORM_CONFIG", str(path))
        return path

    return write


def run_dag(dag_id: str, conf: dict | None = None):
    from sera_airflow import run_dag_locally

    dag_run = run_dag_locally(dag_id, conf)
    return dag_run, {(ti.task_id, ti.map_index): ti for ti in dag_run.get_task_instances()}


def store_of(platform_file: Path, dag_run) -> RunStore:
    return RunStore(load_platform(platform_file).storage_root, REPO, dag_run.run_id)


def test_a_run_without_a_usable_commit_fails_at_sampling_naming_each_commit(platform_file, monkeypatch, capfd):
    def failing_smoke_check(*_args, **_kwargs):
        raise images.ImageBuildError(f"repo {REPO}: {SMOKE_FAILURE}\n--- output (tail) ---\n...", permanent=True)

    monkeypatch.setattr(images, "local_sandbox", failing_smoke_check)
    platform = platform_file("http://127.0.0.1:9/v1")  # never called: nothing gets that far
    dag_run, tis = run_dag(f"sera__{REPO}", {"commits": ["HEAD", "0000000bad"]})
    output = capfd.readouterr()

    assert str(dag_run.state) == "failed"
    for index in (0, 1):  # permanent: failed on the first try although retries is 2
        build = tis[("per_commit.build_image", index)]
        assert (str(build.state), build.try_number) == ("failed", 1)
    sample = tis[("sample_instances", -1)]
    assert (str(sample.state), sample.try_number) == ("failed", 1)
    assert str(tis[("publish", -1)].state) == "upstream_failed"
    log = output.out + output.err
    assert "no usable commit" in log  # sample's error lists every commit with its first line of reason
    assert re.search(rf"commit [0-9a-f]{{12}}: build_image: ImageBuildError: repo {REPO}: {SMOKE_FAILURE}", log)
    assert "commit 0000000bad: build_image: SourceError: commit '0000000bad' not found" in log
    recorded = json.loads(store_of(platform, dag_run).image_error("0000000bad").read_text())
    assert recorded["stage"] == "build_image" and "not found" in recorded["error"]


def test_a_config_error_fails_its_task_after_one_try(platform_file, tmp_path):
    repos = tmp_path / "repos"
    repos.mkdir()
    (repos / "broken.yaml").write_text("source: bundled:tinyledger\nverify: {threshold: 3}\n")
    platform_file("http://127.0.0.1:9/v1", repos_dir=repos)
    dag_run, tis = run_dag("sera__broken")
    task = tis[("config_error", -1)]
    assert str(dag_run.state) == "failed"
    assert (str(task.state), task.try_number, task.max_tries) == ("failed", 1, 2)


def test_a_teacher_outage_is_retried_and_the_run_fails_at_assemble_naming_the_error(platform_file):
    with ScriptedTeacher(ScriptedTeacherConfig(error_rate=1.0)) as broken:
        platform = platform_file(broken.url)
        dag_run, tis = run_dag(f"sera__{REPO}", {"max_functions": 4})

    assert str(dag_run.state) == "failed"
    rollout = tis[("per_batch.rollouts", 0)]
    assert (str(rollout.state), rollout.try_number) == ("failed", 3)  # transient: every retry was used
    assemble = tis[("assemble", -1)]
    assert (str(assemble.state), assemble.try_number) == ("failed", 1)
    stats = json.loads((store_of(platform, dag_run).dataset_dir / "stats.json").read_text())
    assert stats["failed"]["instances"] == stats["failed"]["rollout1"] == stats["instances"] == 4
    most_common = next(iter(stats["failed"]["by_error"]))
    assert most_common.startswith("rollout1: EpisodeError") and "injected by the scripted teacher" in most_common


def test_failed_instances_beside_records_are_counted_and_the_run_succeeds(platform_file, monkeypatch):
    real_episode, lock, calls = batches.run_episode, threading.Lock(), []

    def first_call_fails(spec: EpisodeSpec):
        with lock:
            calls.append(spec.instance_id)
            first = len(calls) == 1
        if first:
            raise RuntimeError("sandbox exploded")
        return real_episode(spec)

    monkeypatch.setattr(batches, "run_episode", first_call_fails)
    with ScriptedTeacher(ScriptedTeacherConfig()) as teacher:
        platform = platform_file(teacher.url)
        dag_run, _ = run_dag(f"sera__{REPO}", {"max_functions": 4})

    assert str(dag_run.state) == "success"
    stats = json.loads((store_of(platform, dag_run).dataset_dir / "stats.json").read_text())
    assert stats["records"]["t1"] == 3
    assert stats["failed"] == {"instances": 1, "rollout1": 1, "synth": 0, "rollout2": 0,
                               "by_error": {"rollout1: RuntimeError: sandbox exploded": 1}}


def _pull_failure(status: int) -> ImageSourceError:
    """What image_sources raises when the engine's pull answered `status` (the API error is its context)."""
    import docker.errors

    response = requests.Response()
    response.status_code = status
    try:
        try:
            raise docker.errors.APIError("pull failed", response=response)
        except docker.errors.APIError:
            raise ImageSourceError("image x is not in the Docker engine and pulling it failed") from None
    except ImageSourceError as exc:
        return exc


@pytest.mark.parametrize(("error", "permanent"), [
    (ConfigError("repos/x.yaml", "source", "missing"), True),
    (SourceError("commit 'abc' not found"), True),
    (InvalidParam("param 'model_server': unknown model server 'x'"), True),
    (RunFailed("no usable commit"), True),
    (images.ImageBuildError("smoke check failed", permanent=True), True),
    (images.ImageBuildError("registry push failed"), False),
    (_pull_failure(404), True),  # the image does not exist
    (_pull_failure(500), False),  # the registry behind the engine is down
    (SourceUnreachable("git clone failed: could not resolve host"), False),
    (BatchFailed("only 0/4 instances finished"), False),
    (ConnectionError("engine went away"), False),
])
def test_what_counts_as_permanent(error, permanent):
    assert is_permanent(error) is permanent
