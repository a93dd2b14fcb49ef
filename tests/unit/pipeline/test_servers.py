"""Many model servers per run: batches spread by capacity with a commit's instances kept on one server, a dead server's
batches moved to the others (nothing lost), the repository setting and run params, and the DAG's batch group per
server under `dag.test()`."""
import json
import logging
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from sera_ops import pipeline
from sera_ops.pipeline.context import InvalidParam, RunContext, RunParams
from sera_ops.rollouts.teacher import TeacherUnreachable
from sera_ops.settings import ConfigError, EvalSettings, load_platform, load_repo, load_repos
from sera_ops.store.layout import RunStore
from sera_ops.testing.dry_run import dry_run_platform
from sera_ops.testing.scripted_teacher import ScriptedTeacher
from tests.support import ROOT
from tests.support.pipeline import prepare

DEAD_URL = "http://127.0.0.1:9/v1"  # the discard port: connections are refused at once
SERVERS = ["scripted", "second"]
REPO = "twoservers"  # its own DAG and dataset Asset in the session's metadata DB (see test_run_state)


def platform_with_two_servers(tmp_path: Path, first_url: str, second_url: str, repos_dir: Path | None = None,
                              **overrides) -> Path:
    """'scripted' (concurrency 4) and 'second' (concurrency 2), both 2 parallel batches: capacities 8 and 4; one
    episode per request slot keeps batches small."""
    servers = {"scripted": {"base_url": first_url, "model": "scripted-teacher", "concurrency": 4,
                            "episodes_per_slot": 1, "max_retries": 0},
               "second": {"base_url": second_url, "model": "scripted-teacher", "concurrency": 2,
                          "episodes_per_slot": 1, "max_retries": 0}}
    return dry_run_platform(ROOT / "config" / "platform.yaml", tmp_path, first_url, storage_root=tmp_path / "store",
                            repos_dir=repos_dir,
                            overrides={"images": {"sandbox": "local"}, "model_servers": servers, **overrides})


def two_server_context(tmp_path: Path, first_url: str, second_url: str, instances: int = 12) -> RunContext:
    platform = load_platform(platform_with_two_servers(tmp_path, first_url, second_url))
    spec = load_repos(platform)[0][0]
    spec = spec.model_copy(update={"model_servers": SERVERS, "eval": EvalSettings(),  # every instance trains
                                   "batching": spec.batching.model_copy(update={"batch_size": 2})})
    return RunContext.create(platform, spec, "run-1", RunParams(max_functions=instances))


def requests(teacher: ScriptedTeacher) -> int:
    return sum(teacher.stats[kind] for kind in ("agent", "judge", "writer"))


def outcomes(ctx: RunContext) -> set[str]:
    """How the sampled instances ended: a verdict, a duplicate patch, a patch the judge turned down, an error record
    (its file name), or 'lost' (none of these)."""
    ends = set()
    for record in ctx.store.read_json(ctx.store.instances):
        instance_id = record["instance_id"]
        errors = sorted(path.name for path in ctx.store.instance(instance_id).dir.glob("*.error.json"))
        rollout_one = ctx.store.read_json(ctx.store.instance(instance_id).rollout_one) or {}
        ends.add(next((end for end, done in (
            ("verdict", ctx.store.instance(instance_id).verdict.exists()),
            ("duplicate", ctx.store.instance(instance_id).duplicate.exists()),
            ("judged bad", rollout_one.get("is_good_patch") is False), *((name, True) for name in errors))
            if done), "lost"))
    return ends


@pytest.mark.slow
def test_batches_spread_by_capacity_and_a_commit_stays_on_one_server(tmp_path):
    with ScriptedTeacher() as first, ScriptedTeacher() as second:
        ctx = two_server_context(tmp_path, first.url, second.url)
        stats = pipeline.run_all(ctx)
        plan = ctx.store.read_json(ctx.store.batches)
        per_server = defaultdict(list)
        for batch in plan.values():
            per_server[batch["server"]] += batch["instances"]
        assert {name: len(ids) for name, ids in per_server.items()} == {"scripted": 8, "second": 4}  # 8:4 capacity
        assert 1.5 <= requests(first) / requests(second) <= 3, (first.stats, second.stats)  # duplicates vary
        servers_of_commit = defaultdict(set)
        for name, ids in per_server.items():
            for instance_id in ids:
                servers_of_commit[instance_id.split("_")[1]].add(name)
        assert sum(len(names) > 1 for names in servers_of_commit.values()) <= len(SERVERS) - 1
        assert outcomes(ctx) <= {"verdict", "duplicate", "judged bad"} and stats["instances"] == 12
        assert not ctx.store.move("any").parent.exists()


@pytest.mark.slow
def test_killing_a_server_mid_run_moves_its_batches_and_loses_nothing(tmp_path, caplog):
    with ScriptedTeacher() as first, ScriptedTeacher() as second:
        ctx, second_url = two_server_context(tmp_path, first.url, second.url), second.url
        batches = prepare(ctx)
        on_second = [batch for batch in batches if ctx.for_batch(batch).server_name == "second"]
        assert len(on_second) == 2
        with caplog.at_level(logging.WARNING, logger="sera_ops.pipeline"):
            for batch in batches:
                pipeline.rollouts(ctx, batch)
                if batch == on_second[0]:
                    second.stop()
        served_by_second = requests(second)
        stats = pipeline.assemble(ctx)
    assert served_by_second > 0
    assert outcomes(ctx) <= {"verdict", "duplicate", "judged bad"} and stats["instances"] == 12
    move = ctx.store.read_json(ctx.store.move(on_second[1]))
    assert (move["assigned"], move["server"]) == ("second", "scripted") and "cannot be reached" in move["reason"]
    assert f"model server 'second' at {second_url} cannot be reached" in caplog.text
    assert f"{on_second[1]}: moved from model server 'second' at {second_url}" in caplog.text
    assert ctx.for_batch(on_second[1]).server_name == "second", "batches.json keeps the assignment"


def test_no_live_server_fails_the_batch_naming_the_assigned_one(tmp_path):
    with ScriptedTeacher() as first:
        ctx = two_server_context(tmp_path, first.url, DEAD_URL, instances=4)
        batch = next(b for b in prepare(ctx) if ctx.for_batch(b).server_name == "second")
    with pytest.raises(TeacherUnreachable, match=f"model server 'second' at {DEAD_URL}"):
        pipeline.rollouts(ctx, batch)


def test_model_servers_setting_and_params(tmp_path):
    platform_file = platform_with_two_servers(tmp_path, DEAD_URL, DEAD_URL)
    platform = load_platform(platform_file)
    repo = tmp_path / "demo.yaml"
    repo.write_text("source: bundled:tinyledger\nmodel_servers: [second, scripted]\n")
    spec = load_repo(repo, platform)
    assert (spec.model_server, spec.model_servers) == ("second", ["second", "scripted"])
    repo.write_text("source: bundled:tinyledger\n")
    assert load_repo(repo, platform).model_servers == ["scripted"]
    for text, field, problem in (("model_servers: [scripted, nope]", "model_servers.1", "not defined"),
                                 ("model_servers: [second, second]", "model_servers", "listed more than once"),
                                 ("model_server: scripted\nmodel_servers: [second, scripted]", "model_server",
                                  "not the first of model_servers")):
        repo.write_text(f"source: bundled:tinyledger\n{text}\n")
        with pytest.raises(ConfigError, match=problem) as caught:
            load_repo(repo, platform)
        assert caught.value.field == field

    def servers(**params) -> list[str]:
        return RunContext.create(platform, spec, "r", RunParams.from_dict(params)).server_names

    assert servers() == ["second", "scripted"]
    assert servers(model_server="scripted") == ["scripted"]
    assert servers(model_servers=["scripted", "second"]) == ["scripted", "second"]
    with pytest.raises(InvalidParam, match="param 'model_servers': unknown model server 'nope'"):
        servers(model_servers=["nope"])
    with pytest.raises(InvalidParam, match="give one of them"):
        servers(model_server="scripted", model_servers=["second"])


@pytest.mark.e2e
def test_the_dag_runs_one_batch_group_per_server_and_moves_a_dead_servers_batches(tmp_path, monkeypatch, capfd,
                                                                                  caplog, airflow_db):
    repos = tmp_path / "repos"
    repos.mkdir()
    tinyledger = yaml.safe_load((ROOT / "config" / "repos" / "tinyledger.yaml").read_text())
    tinyledger.pop("training")
    (repos / f"{REPO}.yaml").write_text(yaml.safe_dump({**tinyledger, "model_servers": SERVERS,
                                                        "batching": {"batch_size": 2}}))
    with ScriptedTeacher() as first:
        platform_file = platform_with_two_servers(tmp_path, first.url, DEAD_URL, repos_dir=repos,
                                                  defaults={"retries": 1, "retry_delay_s": 0})
        monkeypatch.setenv("SERA_PLATFORM_CONFIG", str(platform_file))
        from sera_airflow import run_dag_locally

        dag_run = run_dag_locally(f"sera__{REPO}", {"max_functions": 6})
    log = capfd.readouterr()
    tis = {(ti.task_id, ti.map_index): ti for ti in dag_run.get_task_instances()}
    assert str(dag_run.state) == "success", {key: str(ti.state) for key, ti in tis.items()}
    store = RunStore(load_platform(platform_file).storage_root, REPO, dag_run.run_id)
    plan = json.loads(store.batches.read_text())
    for server in SERVERS:
        mine = sorted(key[1] for key in tis if key[0] == f"per_batch_{server}.rollouts")
        assigned = [batch for batch in plan.values() if batch["server"] == server]
        assert mine == list(range(len(assigned))) and assigned, server
        assert all(str(tis[(f"per_batch_{server}.rollouts", index)].state) == "success" for index in mine)
        assert str(tis[(f"batches_{server}", -1)].state) == "success"
    moved = sorted(path.stem for path in store.move("any").parent.glob("*.json"))
    assert moved == sorted(batch_id for batch_id, batch in plan.items() if batch["server"] == "second")
    logged = log.out + log.err + caplog.text  # where task logs go depends on how earlier tests left the logging
    assert f"model server 'second' at {DEAD_URL} cannot be reached" in logged
    stats = json.loads((store.dataset_dir / "stats.json").read_text())
    assert stats["instances"] == 6 and stats["failed"]["instances"] == 0
