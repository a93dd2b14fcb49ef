"""DAG integrity: every file imports, every DAG has an owner, tags and retries, params validate, bad configs show."""
import os
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

from tests.conftest import ROOT


def load_bag(platform_file: Path | None = None) -> DagBag:
    previous = os.environ.get("SERA_PLATFORM_CONFIG")
    if platform_file:
        os.environ["SERA_PLATFORM_CONFIG"] = str(platform_file)
    try:
        return DagBag(dag_folder=str(ROOT / "dags"))
    finally:
        if previous is None:
            os.environ.pop("SERA_PLATFORM_CONFIG", None)
        else:
            os.environ["SERA_PLATFORM_CONFIG"] = previous


@pytest.fixture(scope="module")
def bag() -> DagBag:
    return load_bag()


def test_no_import_errors(bag):
    assert bag.import_errors == {}


def test_one_dag_per_repository_file(bag):
    repo_files = sorted(p.stem for p in (ROOT / "config" / "repos").glob("*.yaml"))
    assert sorted(d for d in bag.dag_ids if d.startswith("sera__")) == [f"sera__{name}" for name in repo_files]


def test_every_dag_has_owner_tags_and_retries(bag):
    assert bag.dags
    for dag_id, dag in bag.dags.items():
        assert dag.tags, dag_id
        for task in dag.tasks:
            assert task.owner and task.owner != "airflow", (dag_id, task.task_id)
            assert task.retries >= 1, (dag_id, task.task_id)


def test_repo_dag_shape(bag):
    dag = bag.dags["sera__tinyledger"]
    ids = set(dag.task_ids)
    assert {"select_commits", "per_commit.build_image", "per_commit.inventory", "sample_instances", "make_batches",
            "per_batch.rollout_one", "per_batch.synthesize", "per_batch.rollout_two", "per_batch.verify",
            "assemble", "publish"} == ids
    assert dag.get_task("per_batch.synthesize").upstream_task_ids == {"per_batch.rollout_one"}
    assert dag.get_task("assemble").trigger_rule == "all_done"
    assert set(dag.params) == {"commits", "max_functions", "model_server", "threshold"}


def test_params_are_validated(bag):
    from airflow.sdk.exceptions import ParamValidationError

    params = bag.dags["sera__tinyledger"].params
    params.validate()
    for key, bad in (("threshold", 1.5), ("model_server", "nope"), ("max_functions", 0), ("commits", ["a b"])):
        with pytest.raises(ParamValidationError):
            params.get_param(key).resolve(bad)


def test_bad_repo_file_shows_as_a_failing_dag_and_spares_the_others(tmp_path):
    repos = tmp_path / "repos"
    repos.mkdir()
    (repos / "good.yaml").write_text("source: bundled:tinyledger\n")
    (repos / "bad.yaml").write_text("source: bundled:tinyledger\nverify: {threshold: 3}\n")
    platform = tmp_path / "platform.yaml"
    platform.write_text((ROOT / "config" / "platform.yaml").read_text()
                        .replace("repos_dir: repos", f"repos_dir: {repos}"))
    bag = load_bag(platform)
    assert bag.import_errors == {}
    assert {"sera__good", "sera__bad"} <= set(bag.dag_ids)
    broken = bag.dags["sera__bad"]
    assert "config-error" in broken.tags
    assert "bad.yaml: field 'verify.threshold'" in broken.description
