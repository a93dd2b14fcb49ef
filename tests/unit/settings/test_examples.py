"""The ready-made files in config/examples/ stay valid: every platform file with every repository file (any YAML
there that is not a platform-*.yaml)."""
from pathlib import Path

import pytest
import yaml

from sera_ops.cli import main
from tests.support import ROOT

EXAMPLES = ROOT / "config" / "examples"
PLATFORMS = sorted(EXAMPLES.glob("platform*.yaml"))
REPOS = sorted(set(EXAMPLES.rglob("*.y*ml")) - set(PLATFORMS))


@pytest.fixture(autouse=True)
def no_docker_engine(monkeypatch):
    """The base image is checked only where an engine answers; keep these tests independent of one."""
    monkeypatch.setattr("sera_ops.build.images.docker_client", lambda: None)


@pytest.mark.parametrize("platform", PLATFORMS, ids=lambda path: path.name)
def test_examples_validate(platform: Path, capsys):
    assert PLATFORMS and REPOS
    assert main(["validate", "--platform", str(platform), "--no-source-check", *map(str, REPOS)]) == 0
    out = capsys.readouterr().out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("ok ")] == \
           ["platform", *(f"sera__{path.stem}" for path in REPOS)]


def test_placeholder_sources_are_reported_as_exactly_that(capsys):
    assert main(["validate", "--platform", str(PLATFORMS[0]), *map(str, REPOS)]) == 1
    problems = [line for line in capsys.readouterr().out.splitlines() if line.startswith("error ") and "field" in line]
    assert problems and all("field 'source'" in line and "does not exist" in line for line in problems), problems


@pytest.mark.parametrize(("name", "launch"), [
    ("platform-vllm.yaml", "vllm serve zai-org/GLM-4.6 --tensor-parallel-size 8"),
    ("platform-sglang.yaml", "python -m sglang.launch_server --model-path Qwen/Qwen3-32B"),
])
def test_self_hosted_examples_document_a_launch_with_a_tool_call_parser(name: str, launch: str):
    text = (EXAMPLES / name).read_text()
    assert launch in text and "--tool-call-parser" in text and "--reasoning-parser" in text
    servers = yaml.safe_load(text)["model_servers"]
    assert all(server["tool_calls"] for server in servers.values())
