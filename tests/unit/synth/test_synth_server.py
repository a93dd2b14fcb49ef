"""`synth.model_server`: the judge and the PR writer may use another configured model server than the agent."""
from pathlib import Path

import pytest

from sera_ops import pipeline
from sera_ops.pipeline.context import RunContext, RunParams
from sera_ops.settings import ConfigError, load_platform, load_repo, load_repos
from sera_ops.testing.dry_run import dry_run_platform
from sera_ops.testing.scripted_teacher import ScriptedTeacher, ScriptedTeacherConfig
from tests.support import ROOT
from tests.support.pipeline import prepare

JUDGE_KEY = "sk-judge-only-5678"
JUDGE_KEY_ENV = "SERA_TEST_JUDGE_KEY"


def two_server_context(tmp_path: Path, agent_url: str, judge_url: str, *, synth_server: str | None,
                       params: RunParams | None = None) -> RunContext:
    """The bundled sample on the 'scripted' server, plus a 'judge' server whose key comes from the environment."""
    judge = {"base_url": judge_url, "model": "scripted-teacher", "api_key": {"env": JUDGE_KEY_ENV}}
    platform_file = dry_run_platform(ROOT / "config" / "platform.yaml", tmp_path, agent_url,
                                     storage_root=tmp_path / "store",
                                     overrides={"images": {"sandbox": "local"}, "model_servers": {"judge": judge}})
    platform = load_platform(platform_file)
    spec = load_repos(platform)[0][0]
    spec = spec.model_copy(update={"synth": spec.synth.model_copy(update={"model_server": synth_server})})
    return RunContext.create(platform, spec, "run-1", params or RunParams(max_functions=2))


def test_judge_and_writer_calls_go_to_the_synth_server_with_its_key(tmp_path, monkeypatch):
    monkeypatch.setenv(JUDGE_KEY_ENV, JUDGE_KEY)
    with ScriptedTeacher(ScriptedTeacherConfig()) as agent, \
            ScriptedTeacher(ScriptedTeacherConfig(api_key=JUDGE_KEY)) as judge:
        ctx = two_server_context(tmp_path, agent.url, judge.url, synth_server="judge")
        for batch in prepare(ctx):
            assert pipeline.rollout_one(ctx, batch)["failed"] == 0
            assert pipeline.synthesize(ctx, batch)["failed"] == 0
        agent_calls, judge_calls = agent.stats, judge.stats
    assert agent_calls["agent"] > 0 and agent_calls["judge"] == agent_calls["writer"] == 0
    assert judge_calls["agent"] == 0 and judge_calls["judge"] > 0 and judge_calls["writer"] > 0
    assert list(ctx.store.run_dir.rglob("synth.json"))


def test_synth_client_defaults_to_the_agents_server(tmp_path):
    url = "http://127.0.0.1:9/v1"
    ctx = two_server_context(tmp_path, "http://127.0.0.4:9/v1", url, synth_server=None)
    assert ctx.synth_client().server == ctx.server == ctx.platform.model_servers["scripted"]
    by_param = two_server_context(tmp_path, url, "http://127.0.0.2:9/v1", synth_server=None,
                                  params=RunParams(model_server="judge"))
    assert str(by_param.synth_client().server.base_url) == "http://127.0.0.2:9/v1", "follows the agent's server"
    pinned = two_server_context(tmp_path, "http://127.0.0.3:9/v1", url, synth_server="scripted",
                                params=RunParams(model_server="judge"))
    assert str(pinned.synth_client().server.base_url) == "http://127.0.0.3:9/v1", "synth.model_server wins"


PLATFORM = """
storage_root: store
model_servers:
  agent: {base_url: "http://127.0.0.1:9/v1", model: small}
  judge: {base_url: "http://127.0.0.1:10/v1", model: large}
defaults: {model_server: agent}
"""


@pytest.fixture
def platform_file(tmp_path: Path) -> Path:
    (tmp_path / "repos").mkdir()
    path = tmp_path / "platform.yaml"
    path.write_text(PLATFORM)
    return path


def test_synth_model_server_is_optional_and_must_be_configured(platform_file):
    platform = load_platform(platform_file)
    repo = platform_file.parent / "repos" / "demo.yaml"
    repo.write_text("source: bundled:tinyledger\n")
    assert load_repo(repo, platform).synth.model_server is None
    repo.write_text("source: bundled:tinyledger\nsynth: {model_server: judge}\n")
    assert load_repo(repo, platform).synth.model_server == "judge"
    repo.write_text("source: bundled:tinyledger\nsynth: {model_server: nope}\n")
    with pytest.raises(ConfigError) as caught:
        load_repo(repo, platform)
    assert caught.value.field == "synth.model_server"
    assert "'nope' is not defined" in str(caught.value) and "agent, judge" in str(caught.value)
