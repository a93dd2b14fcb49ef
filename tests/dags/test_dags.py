"""DAG integrity: every file imports, every DAG has an owner, tags and retries, params validate, bad configs show."""
import os
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

from sera_ops.testing.dry_run import dry_run_platform
from tests.support import ROOT


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
            assert task.retry_exponential_backoff > 1 and task.max_retry_delay, (dag_id, task.task_id)


def test_repo_dag_shape(bag):
    dag = bag.dags["sera__tinyledger"]
    ids = set(dag.task_ids)
    assert {"select_commits", "mirror", "per_commit.build_image", "per_commit.inventory", "sample_instances",
            "make_batches", "per_batch.rollouts", "assemble", "publish"} == ids
    assert dag.get_task("per_batch.rollouts").upstream_task_ids == {"make_batches"}
    assert dag.get_task("assemble").trigger_rule == "all_done"
    assert dag.get_task("per_batch.rollouts").pool == "sera_model_scripted"
    assert set(dag.params) == {"commits", "max_functions", "model_server", "model_servers", "threshold",
                               "incremental"}


def test_a_repository_on_two_servers_has_one_batch_group_per_server_in_its_pool(tmp_path):
    repos = tmp_path / "repos"
    repos.mkdir()
    (repos / "pair.yaml").write_text("source: bundled:tinyledger\nmodel_servers: [scripted, big]\n")
    big = {"base_url": "http://127.0.0.1:8/v1", "model": "m"}
    platform = dry_run_platform(ROOT / "config" / "platform.yaml", tmp_path, "http://127.0.0.1:9/v1", repos_dir=repos,
                                overrides={"model_servers": {"big": big}})
    dag = load_bag(platform).dags["sera__pair"]
    for server in ("scripted", "big"):
        rollouts = dag.get_task(f"per_batch_{server}.rollouts")
        assert rollouts.pool == f"sera_model_{server}"
        assert rollouts.upstream_task_ids == {f"batches_{server}"}
        assert dag.get_task(f"batches_{server}").upstream_task_ids == {"make_batches"}
    assert dag.get_task("assemble").upstream_task_ids == {"per_batch_scripted.rollouts", "per_batch_big.rollouts"}
    assert not any(task_id.startswith("per_batch.") for task_id in dag.task_ids)


def test_params_are_validated(bag):
    from airflow.sdk.exceptions import ParamValidationError

    params = bag.dags["sera__tinyledger"].params
    params.validate()
    for key, bad in (("threshold", 1.5), ("model_server", "nope"), ("max_functions", 0), ("commits", ["a b"]),
                     ("model_servers", ["nope"]), ("model_servers", ["scripted", "scripted"])):
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


def test_training_dag_is_scheduled_on_the_dataset_asset(bag):
    dag = bag.dags["sera_train__tinyledger"]
    assert set(dag.task_ids) == {"prepare_job", "train"}
    assert [asset.name for asset in dag.timetable.asset_condition.objects] == ["sera_dataset__tinyledger"]
    publish = bag.dags["sera__tinyledger"].get_task("publish")
    assert [outlet.name for outlet in publish.outlets] == ["sera_dataset__tinyledger"]


def test_evaluation_dag_is_scheduled_on_the_trained_model(bag):
    """The loop closes in Airflow: publish → dataset Asset → training → model Asset → evaluation."""
    dag = bag.dags["sera_eval__tinyledger"]
    assert set(dag.task_ids) == {"plan", "evaluate", "report"}
    assert [asset.name for asset in dag.timetable.asset_condition.objects] == ["sera_model__tinyledger"]
    assert [outlet.name for outlet in bag.dags["sera_train__tinyledger"].get_task("train").outlets] == [
        "sera_model__tinyledger"]
    assert dag.get_task("evaluate").upstream_task_ids == {"plan"}
    assert dag.get_task("report").trigger_rule == "all_done"  # a model that fails leaves the others' table
    assert set(dag.params) == {"models", "model_servers", "teacher_server", "student_server", "base_server",
                               "seeds", "model_dir"}
    from airflow.sdk.exceptions import ParamValidationError

    dag.params.validate()
    for key, bad in (("models", ["oracle"]), ("model_servers", ["nope"]), ("student_server", "nope"), ("seeds", 0)):
        with pytest.raises(ParamValidationError):
            dag.params.get_param(key).resolve(bad)


def test_kubernetes_backend_serves_the_student_around_the_evaluations(tmp_path):
    platform = tmp_path / "platform.yaml"
    platform.write_text((ROOT / "config" / "platform.yaml").read_text()
                        .replace("repos_dir: repos", f"repos_dir: {ROOT / 'config' / 'repos'}")
                        .replace("storage_root: ../var/store", f"storage_root: {tmp_path / 'store'}")
                        + "training:\n  backend: kubernetes\n  kubernetes: {storage_claim: sera-store}\n")
    dag = load_bag(platform).dags["sera_eval__tinyledger"]
    serve, stop = dag.get_task("serve_student"), dag.get_task("stop_serving")
    assert serve.is_setup and stop.is_teardown
    assert dag.get_task("plan").upstream_task_ids == {"serve_student"}
    assert stop.upstream_task_ids == {"serve_student", "evaluate"}


class _JobXCom:
    """What the training pod's templated arguments read: prepare_job's return value."""

    def __init__(self, job: dict):
        self.job = job

    def xcom_pull(self, task_ids: str):
        assert task_ids == "prepare_job"
        return self.job


def test_kubernetes_training_pod_spec(tmp_path):
    import jinja2

    platform = tmp_path / "platform.yaml"
    platform.write_text((ROOT / "config" / "platform.yaml").read_text()
                        .replace("repos_dir: repos", f"repos_dir: {ROOT / 'config' / 'repos'}")
                        .replace("storage_root: ../var/store", f"storage_root: {tmp_path / 'store'}")
                        + "training:\n  backend: kubernetes\n  kubernetes: {namespace: ml, "
                          "image: reg.local/sera-train:1, gpus: 2, memory: 32Gi, storage_claim: sera-store, "
                          "node_selector: {pool: gpu}}\n")
    dag = load_bag(platform).dags["sera_train__tinyledger"]
    pod_task = dag.get_task("train")
    assert type(pod_task).__name__ == "KubernetesPodOperator" and pod_task.retries >= 1
    assert dag.description.endswith("(lora, kubernetes, 2 GPU ddp)")
    arguments = ["--data", f"{tmp_path}/store/tinyledger/runs/r/dataset/t1.jsonl", "--out", "/m", "--settings", "/s"]
    env = dag.get_template_env()
    assert isinstance(env, jinja2.nativetypes.NativeEnvironment)
    pod_task.render_template_fields({"ti": _JobXCom({"arguments": arguments})}, jinja_env=env)
    pod = pod_task.build_pod_request_obj(dry_run=True)
    container = pod.spec.containers[0]
    assert pod.metadata.namespace == "ml" and container.image == "reg.local/sera-train:1"
    # one training process per requested GPU, started by accelerate with the shipped DDP config
    assert container.command == ["accelerate", "launch", "--config_file", "sera_ops/accelerate/ddp.yaml",
                                 "--num_processes=2", "-m", "sera_ops.train"]
    assert container.args == arguments
    assert (ROOT / container.command[3]).is_file()
    limits = {key: str(value) for key, value in container.resources.limits.items()}  # native templating: 8 or "8"
    assert limits == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}
    assert [m.mount_path for m in container.volume_mounts] == [str(tmp_path / "store"), "/dev/shm"]
    assert pod.spec.volumes[0].persistent_volume_claim.claim_name == "sera-store"
    assert pod.spec.volumes[1].empty_dir.medium == "Memory"  # NCCL's shared memory between the 2 processes
    assert pod.spec.node_selector == {"pool": "gpu"}
    assert {e.name for e in container.env} == {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"}
