"""Teacher usage and cost: per instance and kind of call (agent, judge, writer), summed per stage, server and run in
stats.json; hosted prices; an instance over its cost limit is stopped as `cost_limited`, and a run over its limit
starts no new instance. Local sandbox, scripted teacher."""
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import yaml

from sera_ops import pipeline
from sera_ops import records as records_
from sera_ops.records import COST_LIMITED
from sera_ops.rollouts.spend import Budget, SpendLedger
from sera_ops.rollouts.teacher import TeacherClient
from sera_ops.settings import ConfigError, CostLimits, ModelServer, load_platform, load_repo, load_repos
from sera_ops.synth import judge, writer
from sera_ops.testing.scripted_teacher import ScriptedTeacher, ScriptedTeacherConfig
from tests.support import ROOT
from tests.support.pipeline import make_context, prepare

AGENT_PRICES = {"price_per_mtok_in": 2.0, "price_per_mtok_out": 10.0}
JUDGE_PRICES = {"price_per_mtok_in": 3.0, "price_per_mtok_out": 15.0}


def records(ctx: pipeline.RunContext, name: str) -> dict[str, dict]:
    return {path.parent.name: json.loads(path.read_text()) for path in ctx.store.run_dir.rglob(name)}


def priced(ctx: pipeline.RunContext, **update) -> None:
    ctx.platform.model_servers["scripted"] = ctx.server.model_copy(update={**AGENT_PRICES, **update})


def limited(ctx: pipeline.RunContext, **limits) -> None:
    ctx.spec = ctx.spec.model_copy(update={"cost_limits": CostLimits(**limits)})


def test_each_instance_records_its_own_judge_usage_at_full_concurrency(tmp_path):
    with ScriptedTeacher(ScriptedTeacherConfig(judge_reject_first_attempts=0.5, latency_s=0.02, seed=1)) as teacher:
        ctx = make_context(tmp_path, teacher.url)
        priced(ctx, concurrency=4)
        (batch,) = prepare(ctx)
        assert pipeline.rollout_one(ctx, batch)["failed"] == 0
        judge_calls = teacher.stats["judge"]
    results = records(ctx, "rollout1.json")
    assert len(results) == 4
    for result in results.values():
        judged = [a["judgement"]["calls"] for a in result["attempts"] if a["rollout"]["patch"].strip()]
        assert judged and result["judge_usage"]["calls"] == sum(judged) == len(judged)
        assert result["judge_usage"]["server"] == "scripted" and result["judge_usage"]["prompt_tokens"] > 0
    assert {len(r["attempts"]) for r in results.values()} == {1, 2}, "instances differ, so a shared total would show"
    assert sum(r["judge_usage"]["calls"] for r in results.values()) == judge_calls


def test_usage_and_cost_are_summed_per_stage_server_and_run(tmp_path):
    with ScriptedTeacher(ScriptedTeacherConfig()) as teacher:
        ctx = make_context(tmp_path, teacher.url)
        priced(ctx)
        ctx.platform.model_servers["judge"] = ctx.server.model_copy(update=JUDGE_PRICES)
        ctx.spec = ctx.spec.model_copy(update={"synth": ctx.spec.synth.model_copy(update={"model_server": "judge"})})
        stats = pipeline.run_all(ctx)
        answered = teacher.stats
    usage = stats["usage"]
    stages = usage["by_stage"]
    assert stages["rollout1"]["judge"]["calls"] == answered["judge"]
    assert stages["synth"]["writer"]["calls"] == answered["writer"] == stats["synthetic_prs"] == 4
    assert stages["rollout1"]["agent"]["calls"] + stages["rollout2"]["agent"]["calls"] == answered["agent"]

    def cost(tally: dict, prices: dict) -> float:
        return (tally["prompt_tokens"] * prices["price_per_mtok_in"]
                + tally["completion_tokens"] * prices["price_per_mtok_out"]) / 1e6

    servers = usage["by_server"]
    assert set(servers) == {"scripted", "judge"}
    for name, prices, parts in (("scripted", AGENT_PRICES, [stages["rollout1"]["agent"], stages["rollout2"]["agent"]]),
                                ("judge", JUDGE_PRICES, [stages["rollout1"]["judge"], stages["synth"]["writer"]])):
        for field in ("calls", "prompt_tokens", "completion_tokens"):
            assert servers[name][field] == sum(part[field] for part in parts)
        assert servers[name]["cost_usd"] == pytest.approx(cost(servers[name], prices), abs=1e-5)
        assert all(part["cost_usd"] == pytest.approx(cost(part, prices), abs=1e-5) for part in parts)
    total = usage["total"]["cost_usd"]
    assert stats["cost_usd"] == total == pytest.approx(sum(s["cost_usd"] for s in servers.values()))
    assert stats["cost_usd"] > 0 and stats["spent_usd"] == pytest.approx(stats["cost_usd"], abs=1e-5)
    assert (stats[COST_LIMITED], stats["not_started"]) == (0, 0)
    for instance, two in records(ctx, "rollout2.json").items():  # mini-swe-agent's own sum sees the same cost
        trajectory = json.loads(ctx.store.instance(instance).rollout_two_trajectory.read_text())
        assert trajectory["info"]["model_stats"]["instance_cost"] == pytest.approx(two["cost_usd"], abs=1e-6)
        assert two["server"] == "scripted" and two["cost_usd"] > 0


def test_an_instance_over_its_cost_limit_is_stopped_and_recorded(tmp_path):
    limit = 3.0
    with ScriptedTeacher(ScriptedTeacherConfig()) as teacher:
        ctx = make_context(tmp_path, teacher.url)
        priced(ctx, price_per_mtok_in=1000.0)  # a tenth of a cent per prompt token: a few calls reach the limit
        limited(ctx, per_instance_usd=limit)
        (batch,) = prepare(ctx)
        summary = pipeline.rollouts(ctx, batch)
        assert summary["failed"] == 0 and teacher.stats.get("judge", 0) == teacher.stats.get("writer", 0) == 0
        stats = pipeline.assemble(ctx)
    assert (stats[COST_LIMITED], stats["judged_good"], stats["failed"]["instances"]) == (4, 0, 0)
    ledger = SpendLedger(ctx.store.spend_dir)
    for instance, result in records(ctx, "rollout1.json").items():
        final = result["final"]
        assert result[COST_LIMITED] and not result["is_good_patch"] and len(result["attempts"]) == 1
        assert final["exit_status"] == COST_LIMITED and 1 < final["model_calls"] < ctx.spec.rollout.step_limit
        assert result["attempts"][0]["judgement"] == {"is_good_patch": False, "answer": None, "calls": 0,
                                                      "cost_limited": True}
        trajectory = json.loads(ctx.store.instance(instance).trajectory(final["trajectory_file"]).read_text())
        costs = [m["extra"]["cost"] for m in trajectory["messages"] if m["role"] == "assistant"]
        assert sum(costs[:-1]) < limit <= sum(costs) == pytest.approx(final["cost_usd"]), "stopped after crossing"
        assert trajectory["messages"][-1]["extra"]["exit_status"] == COST_LIMITED
        assert ledger.spent(instance) == pytest.approx(final["cost_usd"])


@pytest.mark.slow
def test_a_run_over_its_cost_limit_starts_no_new_instance_until_the_limit_is_raised(tmp_path, caplog):
    with ScriptedTeacher(ScriptedTeacherConfig()) as teacher:
        ctx = make_context(tmp_path, teacher.url)
        priced(ctx, concurrency=1, episodes_per_slot=1)  # one instance at a time: the first one spends the budget
        limited(ctx, per_run_usd=0.0001)
        (batch,) = prepare(ctx)
        summary = pipeline.rollouts(ctx, batch)
        assert summary["failed"] == 0, "not starting is no failure: the batch task succeeds"
        stats = pipeline.assemble(ctx)
        assert (stats["not_started"], stats["rollout_one"], stats["verified"], stats["failed"]["instances"]) == \
               (3, 1, 1, 0)
        assert stats["spent_usd"] >= 0.0001
        markers = list(ctx.store.run_dir.rglob("not_started.json"))
        assert len(markers) == 3 and "cost_limits.per_run_usd" in json.loads(markers[0].read_text())["reason"]
        assert sum("not started" in r.getMessage() for r in caplog.records) == 3
        done = next(path.parent.name for path in ctx.store.run_dir.rglob("rollout1.json"))
        ctx.store.instance(done).synth.unlink()  # as if its task died there: a retry does not resume it
        pipeline.rollouts(ctx, batch)
        assert pipeline.assemble(ctx)["failed"]["by_error"] == {
            f"synth: not run ({json.loads(markers[0].read_text())['reason']})": 1}

        limited(ctx, per_run_usd=100.0)  # a cleared task after raising the limit does the rest
        pipeline.rollouts(ctx, batch)
        stats = pipeline.assemble(ctx)
    assert (stats["not_started"], stats["verified"]) == (0, 4)
    assert not list(ctx.store.run_dir.rglob("not_started.json"))


def test_judge_and_writer_make_no_call_once_the_budget_is_spent():
    with ScriptedTeacher() as teacher:
        server = ModelServer(base_url=teacher.url, model="scripted-teacher")
        settings = load_repos(load_platform(ROOT / "config" / "platform.yaml"))[0][0].synth
        spent = TeacherClient(server, None, name="scripted", budget=Budget(1.0, spent_before_usd=1.0))
        judgement = judge.judge_patch(spent, settings, "task", [], "diff --git a/x b/x\n")
        synthesis = writer.write_synthetic_pr(spent, settings, "i1", [], "diff --git a/x b/x\n",
                                             writer.demo_pool(settings), 0)
        assert teacher.stats.get("judge", 0) == teacher.stats.get("writer", 0) == 0
    assert judgement == records_.Judgement(is_good_patch=False, answer=None, calls=0, cost_limited=True)
    assert (synthesis.synth_pr, synthesis.calls, synthesis.cost_limited) == (None, 0, True)
    assert spent.usage.to_dict() == {"server": "scripted", "calls": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                     "cost_usd": 0.0}


def _append(directory: str, worker: int) -> None:
    ledger = SpendLedger(Path(directory))
    for index in range(200):
        ledger.record(f"i{index % 10}", f"w{worker}", 0.25)


@pytest.mark.slow
def test_the_ledger_sums_parallel_processes_and_reads_only_whole_lines(tmp_path):
    with ProcessPoolExecutor(max_workers=4, max_tasks_per_child=1) as pool:  # four distinct processes
        list(pool.map(_append, [str(tmp_path)] * 4, range(4)))
    ledger = SpendLedger(tmp_path)
    assert len(list(tmp_path.glob("*.jsonl"))) == 4, "one file per process: no two writers share one"
    assert ledger.total() == 4 * 200 * 0.25 and ledger.spent("i3") == 4 * 20 * 0.25
    torn = tmp_path / "elsewhere-1.jsonl"
    torn.write_text('{"instance": "i3", "stage": "rollout1", "usd": 1')
    assert ledger.total() == 200.0, "a line still being written is not read yet"
    with torn.open("a") as handle:
        handle.write(".5}\n")
    assert ledger.total() == 201.5 and ledger.spent("i3") == 21.5
    ledger.record("i3", "synth", 0.0)
    assert ledger.total() == 201.5, "free calls are not written"


def test_prices_and_limits_are_validated(tmp_path):
    server = ModelServer(base_url="http://127.0.0.1:1/v1", model="m", **AGENT_PRICES)
    assert server.cost_usd(1_000_000, 100_000) == pytest.approx(3.0)
    assert ModelServer(base_url="http://127.0.0.1:1/v1", model="m").cost_usd(10**9, 10**9) == 0.0
    with pytest.raises(ValueError, match="price_per_mtok_in"):
        ModelServer(base_url="http://127.0.0.1:1/v1", model="m", price_per_mtok_in=-1)
    platform = load_platform(ROOT / "config" / "platform.yaml")
    repo = tmp_path / "capped.yaml"
    repo.write_text(yaml.safe_dump({"source": str(ROOT), "cost_limits": {"per_instance_usd": 5, "per_run_usd": 2}}))
    with pytest.raises(ConfigError, match=r"field 'cost_limits.per_instance_usd': 5 is more than per_run_usd \(2\)"):
        load_repo(repo, platform)
    repo.write_text(yaml.safe_dump({"source": str(ROOT), "cost_limits": {"per_run_usd": 0}}))
    with pytest.raises(ConfigError, match="cost_limits.per_run_usd"):
        load_repo(repo, platform)


def test_hosted_examples_price_openai_and_anthropic():
    for name in ("platform-hosted.yaml", "platform-anthropic.yaml"):
        platform = load_platform(ROOT / "config" / "examples" / name)
        assert all(s.price_per_mtok_in > 0 and s.price_per_mtok_out > 0 for s in platform.model_servers.values())
    anthropic = load_platform(ROOT / "config" / "examples" / "platform-anthropic.yaml")
    assert anthropic.server(anthropic.defaults.model_server).base_url == "https://api.anthropic.com/v1"
