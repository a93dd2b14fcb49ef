"""The run store on object storage: the whole pipeline against a loopback S3 (moto's server mode), credentials the way
a user gives them (storage options in the environment outside Airflow, an Airflow connection inside), atomic
single-PUT writes, and one winner among concurrent claimers."""
import json
import socket
import time
from collections.abc import Iterator

import boto3
import pytest
from moto.server import ThreadedMotoServer
from upath import UPath

from sera_ops import pipeline
from sera_ops.pipeline.context import RunContext, RunParams
from sera_ops.rollouts.spend import SpendLedger
from sera_ops.settings import EvalSettings, load_platform, load_repos
from sera_ops.store import views
from sera_ops.store.io import STORAGE_OPTIONS_ENV, atomic_write_json, claim, read_json, replacing
from sera_ops.store.layout import RepoStore, safe_name
from sera_ops.testing.dry_run import dry_run_platform
from sera_ops.testing.scripted_teacher import ScriptedTeacher, ScriptedTeacherConfig
from sera_ops.train import jobs
from tests.support import ROOT
from tests.support.store import claims_from_threads

BUCKET = "sera-runs"
KEY, SECRET = "moto-key", "moto-secret"
CONN_ID = "sera_s3"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """A loopback S3 endpoint with an empty bucket; its URL."""
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    _client(url).create_bucket(Bucket=BUCKET)
    yield url
    server.stop()


def _client(url: str):
    return boto3.client("s3", endpoint_url=url, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                        region_name="us-east-1")


@pytest.fixture
def store_options(s3, monkeypatch) -> dict:
    """Storage options as a user outside Airflow sets them: JSON in the environment, never in the config file."""
    options = {"key": KEY, "secret": SECRET, "endpoint_url": s3}
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, json.dumps(options))
    return options


def _objects(url: str, prefix: str) -> dict[str, dict]:
    pages = _client(url).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {item["Key"]: item for page in pages for item in page.get("Contents", [])}


def _airflow_connection(url: str, monkeypatch) -> None:
    """The store's credentials as an Airflow connection (here from the environment, as a secrets backend would)."""
    monkeypatch.delenv(STORAGE_OPTIONS_ENV, raising=False)
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps({
        "conn_type": "aws", "login": KEY, "password": SECRET,
        "extra": {"endpoint_url": url, "region_name": "us-east-1"}}))


def _context(tmp_path, teacher_url: str, prefix: str, run_id: str, **platform_overrides) -> RunContext:
    platform_file = dry_run_platform(ROOT / "config" / "platform.yaml", tmp_path, teacher_url,
                                     storage_root=f"s3://{BUCKET}/{prefix}",
                                     overrides={"images": {"sandbox": "local"},
                                                "local_cache_dir": str(tmp_path / "cache"), **platform_overrides})
    platform = load_platform(platform_file)
    spec = load_repos(platform)[0][0].model_copy(update={"eval": EvalSettings()})  # counts of training ones
    root = None
    if platform.storage_conn_id:
        from sera_airflow import storage_root

        root = storage_root(platform)
    return RunContext.create(platform, spec, run_id, RunParams(max_functions=4), storage_root=root)


def _assert_dataset_in_bucket(url: str, prefix: str, run_id: str, repo: str = "tinyledger") -> dict:
    run = f"{prefix}/{repo}/runs/{safe_name(run_id)}"
    objects = _objects(url, run)
    for name in ("t1.jsonl", "t2.jsonl", "stats.json", "README.md", "t1.parquet", "funnel.png"):
        assert objects[f"{run}/dataset/{name}"]["Size"] > 0, name
    latest = json.loads(_client(url).get_object(Bucket=BUCKET, Key=f"{prefix}/{repo}/datasets/latest.json")
                        ["Body"].read())
    assert latest["run_id"] == run_id and latest["dataset_dir"].endswith(f"{run}/dataset")
    return objects


@pytest.mark.slow
def test_the_pipeline_runs_on_s3_and_a_rerun_redoes_nothing(tmp_path, s3, store_options):
    with ScriptedTeacher(ScriptedTeacherConfig()) as teacher:
        ctx = _context(tmp_path, teacher.url, "domain", "run-1")
        assert ctx.store.repo_store.is_remote
        stats = pipeline.run_all(ctx)
        assert stats["records"] == {"t1": 4, "t2": 4} and stats["dataset_dir"].startswith(f"s3://{BUCKET}/domain/")
        before = _assert_dataset_in_bucket(s3, "domain", "run-1")
        lines = [line for line in _client(s3).get_object(Bucket=BUCKET, Key="domain/tinyledger/runs/run-1/dataset/"
                                                         "t2.jsonl")["Body"].read().splitlines() if line]
        assert len(lines) == 4 and all(json.loads(line)["messages"] for line in lines)
        # git clones and snapshots stayed on the worker's disk, not in the bucket
        assert (tmp_path / "cache" / "tinyledger" / "sources").is_dir()
        assert not [key for key in before if "/sources/" in key or "/snapshots/" in key]
        # what the viewer shows, read from the bucket
        root = ctx.store.root
        assert views.list_repos(root) == ["tinyledger"]
        (summary,) = views.list_runs(root, "tinyledger")
        assert summary.is_latest and summary.stats["records"] == stats["records"]
        detail = views.run_detail(root, "tinyledger", "run-1")
        assert len(detail.instances) == 4 and all(i.resolved for i in detail.instances)
        assert {"t1.jsonl", "README.md", "funnel.png"} <= set(views.dataset_files(root, "tinyledger", "run-1"))
        assert views.instance_detail(root, "tinyledger", "run-1", detail.instances[0].instance_id).trajectory_two

        calls = dict(teacher.stats)
        time.sleep(1.1)  # S3 dates objects to the second: a rewrite now would show in LastModified
        again = _context(tmp_path, teacher.url, "domain", "run-1")
        assert pipeline.run_all(again)["records"] == stats["records"]
        assert dict(teacher.stats) == calls  # a retried run calls no teacher again
        instances = "domain/tinyledger/runs/run-1/instances/"
        after = _objects(s3, instances)
        redone = [key for key, item in after.items() if not key.endswith("verdict.json")
                  and item["LastModified"] != before[key]["LastModified"]]
        assert not redone and set(after) == {key for key in before if key.startswith(instances)}


@pytest.mark.slow
def test_an_airflow_connection_carries_the_credentials(tmp_path, s3, monkeypatch):
    """Inside Airflow the root is an ObjectStoragePath on the connection `storage_conn_id` names; the endpoint and
    keys live in that connection, not in platform.yaml or the process's storage options."""
    _airflow_connection(s3, monkeypatch)
    with ScriptedTeacher(ScriptedTeacherConfig()) as teacher:
        ctx = _context(tmp_path, teacher.url, "airflow", "manual__1", storage_conn_id=CONN_ID)
        assert type(ctx.store.root).__name__ == "ObjectStoragePath"
        stats = pipeline.run_all(ctx)
    assert stats["records"]["t1"] == 4
    assert stats["dataset_dir"] == f"s3://{BUCKET}/airflow/tinyledger/runs/manual__1/dataset"  # no connection id
    _assert_dataset_in_bucket(s3, "airflow", "manual__1")
    assert SECRET not in (tmp_path / "platform.yaml").read_text()

    # training (local backend) reads the published dataset from the bucket and uploads the model, metrics last
    job = jobs.prepare_job(ctx.store.root, "tinyledger", "train__1", {"max_steps": 2, "save_steps": 1}, ["t2"])
    assert job.data_files == [f"s3://{BUCKET}/airflow/tinyledger/runs/manual__1/dataset/t2.jsonl"]
    result = jobs.run_locally(job, ctx.store.root)
    assert result["steps"] == 2 and result["output_dir"] == f"s3://{BUCKET}/airflow/tinyledger/models/train__1"
    model = _objects(s3, "airflow/tinyledger/models/train__1/")
    metrics = json.loads(_client(s3).get_object(Bucket=BUCKET, Key="airflow/tinyledger/models/train__1/metrics.json")
                         ["Body"].read())
    assert metrics["steps"] == 2 and any(key.endswith(".safetensors") for key in model)


@pytest.mark.slow
@pytest.mark.e2e
def test_the_dag_runs_on_s3(tmp_path, s3, monkeypatch, airflow_db):
    """The repository's DAG under dag.test, every task reading and writing the bucket through the connection."""
    from sera_airflow import run_dag_locally

    repo = "s3ledger"  # its own DAG and dataset Asset in the session's metadata DB
    repos = tmp_path / "repos"
    repos.mkdir()
    (repos / f"{repo}.yaml").write_text((ROOT / "config" / "repos" / "tinyledger.yaml").read_text())
    _airflow_connection(s3, monkeypatch)
    with ScriptedTeacher(ScriptedTeacherConfig()) as teacher:
        platform_file = dry_run_platform(
            ROOT / "config" / "platform.yaml", tmp_path, teacher.url, storage_root=f"s3://{BUCKET}/dag",
            repos_dir=repos, overrides={"images": {"sandbox": "local"}, "local_cache_dir": str(tmp_path / "cache"),
                                        "storage_conn_id": CONN_ID, "defaults": {"retries": 0}})
        monkeypatch.setenv("SERA_PLATFORM_CONFIG", str(platform_file))
        dag_run = run_dag_locally(f"sera__{repo}", {"max_functions": 4})
    assert str(dag_run.state) == "success"
    _assert_dataset_in_bucket(s3, "dag", dag_run.run_id, repo)


def test_a_failed_remote_write_leaves_the_previous_object(s3, store_options):
    target = UPath(f"s3://{BUCKET}/atomic/result.json", **store_options)
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})  # the serializer fails halfway through
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_text('{"half":')
        raise RuntimeError("the writer gave up")
    assert read_json(target) == {"ok": 1}
    assert list(_objects(s3, "atomic/")) == ["atomic/result.json"]


def test_concurrent_claimers_agree_on_one_winner(s3, store_options):
    path = RepoStore(f"s3://{BUCKET}/claims", "repo").run("run").patch_claim("abc123")
    results = claims_from_threads(path)
    assert len(results) == 8 and len(set(results)) == 1
    assert claim(path, results[0]) == results[0] and claim(path, "late") == results[0]


def test_the_spend_ledger_adds_up_on_object_storage(s3, store_options):
    """Objects cannot grow: each record rewrites the process's own ledger object, and readers see every line."""
    directory = RepoStore(f"s3://{BUCKET}/ledger", "repo").run("run").spend_dir
    writer = SpendLedger(directory)
    for usd in (0.25, 0.5):
        writer.record("i1", "rollout1", usd)
    writer.record("i2", "synth", 1.0)
    reader = SpendLedger(directory)
    assert reader.total() == 1.75 and reader.spent("i1") == 0.75
    (ledger,) = _objects(s3, "ledger/repo/runs/run/spend/")
    assert ledger.endswith(".jsonl")
