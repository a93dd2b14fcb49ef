"""Images for a real PyPI project (Flask: a flit_core build backend and six runtime dependencies, one compiled),
with a git history made from three consecutive released sdists and every dependency resolved from a wheelhouse on
loopback (scripts/fetch_test_data.sh fetched both once; no test reaches the network). Real Docker engine, real
registry, real mini-swe-agent episodes with the scripted teacher."""
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from sera_ops import pipeline
from sera_ops.build import images
from sera_ops.pipeline.context import RunContext, RunParams
from sera_ops.settings import load_platform, load_repo
from sera_ops.testing.dry_run import dry_run_platform
from sera_ops.testing.scripted_teacher import ScriptedTeacher, ScriptedTeacherConfig
from sera_ops.testing.sdist_history import build_history
from sera_ops.testing.wheelhouse import Wheelhouse
from tests.support import ROOT
from tests.support.parts import require

TESTDATA = Path(os.environ.get("SERA_TESTDATA_DIR", ROOT / "var" / "testdata"))
BUILD_SECRET = "sera-build-secret-7c41e2a9b5"
pytestmark = [pytest.mark.docker, pytest.mark.e2e]


def require_engine_and_testdata() -> None:
    require("docker")
    if not (TESTDATA / "wheelhouse").is_dir():
        pytest.fail(f"{TESTDATA} has no wheelhouse: run scripts/fetch_test_data.sh (make test does)")


def write_repo_file(repos: Path, name: str, **settings) -> Path:
    repos.mkdir(parents=True, exist_ok=True)
    path = repos / f"{name}.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def in_image(image: str, script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "run", "--rm", "--network", "none", image, "bash", "-c", script],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def flask(tmp_path_factory):
    require_engine_and_testdata()
    work = tmp_path_factory.mktemp("flask")
    commits = build_history(work / "flask-src", sorted((TESTDATA / "sdists").glob("flask-*.tar.gz")))
    os.environ["SERA_TEST_BUILD_TOKEN"] = BUILD_SECRET
    with Wheelhouse(TESTDATA / "wheelhouse") as wheelhouse, ScriptedTeacher(ScriptedTeacherConfig()) as teacher:
        platform_file = dry_run_platform(
            ROOT / "config" / "platform.yaml", work, teacher.url, storage_root=work / "store",
            repos_dir=work / "repos",
            overrides={"images": {"sandbox": "docker", "build_network": "host",
                                  "build_env": {**wheelhouse.pip_env(),
                                                "SERA_BUILD_TOKEN": {"env": "SERA_TEST_BUILD_TOKEN"}}}})
        # The token is visible to install steps (the first command proves it) and must land nowhere else.
        digest = hashlib.sha256(BUILD_SECRET.encode()).hexdigest()
        repo_file = write_repo_file(work / "repos", "flask", source=str(work / "flask-src"),
                                    install_cmds=[f'test "$(printf %s "$SERA_BUILD_TOKEN" | sha256sum)" = '
                                                  f'"{digest}  -"', "pip install -e .",
                                                  "pip install pytest"],
                                    top_level_folder=["src/flask"], fns_per_repo=3, batching={"batch_size": 3},
                                    rollout={"step_limit": 20, "time_limit_s": 300})
        platform = load_platform(platform_file)
        ctx = RunContext.create(platform, load_repo(repo_file, platform), "flask-run", RunParams(commits=commits))
        stats = pipeline.run_all(ctx)
        refs = [images.ImageRef.from_dict(ctx.store.read_json(ctx.store.image(c)))
                for c in commits]
        yield {"ctx": ctx, "stats": stats, "commits": commits, "refs": refs, "work": work,
               "wheelhouse": list(wheelhouse.served)}
    os.environ.pop("SERA_TEST_BUILD_TOKEN", None)


def test_every_release_builds_with_dependencies_from_the_wheelhouse(flask):
    assert flask["stats"]["commits"] == {"selected": 3, "ready": 3, "failed": []}
    assert all(ref.origin == "built" and ref.digest for ref in flask["refs"])
    assert {"flit_core-3.12.0-py3-none-any.whl", "werkzeug-3.1.9-py3-none-any.whl"} <= set(flask["wheelhouse"])


def test_the_package_imports_and_its_own_test_suite_collects_in_each_image(flask):
    for ref, version in zip(flask["refs"], ("3.0.1", "3.0.2", "3.0.3"), strict=True):
        result = in_image(ref.image, "python3 -c 'import flask, importlib.metadata as m; print(m.version(\"flask\"))'"
                                     " && python3 -m pytest --collect-only -q tests | tail -n 1")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.split("\n")
        assert lines[0] == version
        collected = int(lines[1].split()[0])
        assert collected > 300, result.stdout


def test_commits_with_the_same_dependency_inputs_share_the_dependency_layer(flask):
    first, second, _ = flask["refs"]
    assert first.dependency_image == second.dependency_image  # 3.0.1 -> 3.0.2 only bumps the version
    layers = [subprocess.run(["docker", "image", "inspect", "--format", "{{json .RootFS.Layers}}", ref.image],
                             capture_output=True, text=True, check=True).stdout for ref in (first, second)]
    first_layers, second_layers = (json.loads(text) for text in layers)
    assert first_layers[:-1] == second_layers[:-1]  # everything but the commit layer is the same
    assert first_layers[-1] != second_layers[-1]


def test_a_dependency_change_gets_a_new_dependency_layer(flask):
    ctx, work = flask["ctx"], flask["work"]
    clone = work / "flask-deps-change"
    shutil.copytree(work / "flask-src", clone)
    pyproject = clone / "pyproject.toml"
    declared = '"blinker>=1.6.2",'
    pyproject.write_text(pyproject.read_text().replace(declared, declared + '\n    "markupsafe>=2.1",'))
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "add a dependency"],
                   cwd=clone, check=True)
    changed = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
    other = RunContext.create(ctx.platform, ctx.spec.model_copy(update={"source": str(clone)}), "deps-change")
    ref = images.ImageRef.from_dict(pipeline.build_image(other, changed))
    assert ref.dependency_image not in {r.dependency_image for r in flask["refs"]}


def test_a_second_worker_takes_the_image_from_the_registry_instead_of_rebuilding(flask):
    ctx, commit, ref = flask["ctx"], flask["commits"][0], flask["refs"][0]
    subprocess.run(["docker", "image", "rm", "--force", ref.image], capture_output=True, check=True)
    again = images.ImageRef.from_dict(pipeline.build_image(RunContext.create(ctx.platform, ctx.spec, "rerun"), commit))
    assert again.origin == "registry"
    assert again.image == ref.image


def test_build_secrets_never_land_in_an_image_or_the_store(flask):
    for ref in flask["refs"]:
        saved = subprocess.run(["docker", "save", ref.image], capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(saved)) as archive:
            for member in archive.getmembers():
                data = archive.extractfile(member)
                if data is None:
                    continue
                content = data.read()
                if member.name.endswith("layer.tar"):
                    with tarfile.open(fileobj=io.BytesIO(content)) as layer:
                        assert not any(name.lstrip("./") == images.BUILD_ENV_FILE.lstrip("/")
                                       for name in layer.getnames())
                assert BUILD_SECRET.encode() not in content, member.name
    for path in flask["ctx"].store.repo_dir.rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            assert BUILD_SECRET not in path.read_text(errors="ignore"), path


def test_the_pipeline_produces_records_on_the_real_project(flask):
    stats = flask["stats"]
    assert stats["instances"] == 3
    assert stats["records"]["t1"] > 0
    lines = (flask["ctx"].store.dataset_dir / "t1.jsonl").read_text().splitlines()
    assert len(lines) == stats["records"]["t1"]
    assert any("src/flask/" in line for line in lines)


@pytest.fixture()
def broken_second_commit(tmp_path):
    """A package whose second commit imports a module that is neither declared nor in the wheelhouse."""
    require_engine_and_testdata()
    repo = tmp_path / "brokenimport"
    (repo / "brokenimport").mkdir(parents=True)
    (repo / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["flit_core>=3.2,<4"]\nbuild-backend = "flit_core.buildapi"\n\n'
        '[project]\nname = "brokenimport"\nversion = "0.1"\ndescription = "x"\ndependencies = ["blinker"]\n')
    package = repo / "brokenimport" / "__init__.py"
    package.write_text('"""Signals."""\nimport blinker\n\n\ndef ping(sender):\n    return blinker.signal("ping")'
                       '.send(sender)\n')
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "one"], cwd=repo, check=True)
    package.write_text(package.read_text() + "\nimport yaml_not_in_the_wheelhouse  # noqa\n")
    subprocess.run([*git, "commit", "-qam", "two"], cwd=repo, check=True)
    log = subprocess.run(["git", "log", "--reverse", "--format=%H"], cwd=repo, capture_output=True, text=True)
    return repo, log.stdout.split()


def test_a_failing_smoke_check_fails_only_that_commit_naming_the_module(tmp_path, broken_second_commit):
    repo, (good, bad) = broken_second_commit
    with Wheelhouse(TESTDATA / "wheelhouse") as wheelhouse, ScriptedTeacher(ScriptedTeacherConfig()) as teacher:
        platform_file = dry_run_platform(
            ROOT / "config" / "platform.yaml", tmp_path, teacher.url, storage_root=tmp_path / "store",
            repos_dir=tmp_path / "repos", overrides={"images": {"sandbox": "docker", "build_network": "host",
                                                                "build_env": wheelhouse.pip_env()}})
        repo_file = write_repo_file(tmp_path / "repos", "brokenimport", source=str(repo), fns_per_repo=2)
        platform = load_platform(platform_file)
        ctx = RunContext.create(platform, load_repo(repo_file, platform), "smoke", RunParams(commits=[good, bad]))
        pipeline.select_commits(ctx)
        with pytest.raises(images.ImageBuildError, match="could not import brokenimport: ModuleNotFoundError: No "
                                                         "module named 'yaml_not_in_the_wheelhouse'") as failure:
            pipeline.build_image(ctx, bad)
        assert failure.value.permanent
        assert not ctx.store.image(bad).exists()
        tag = images.image_name(platform.registry, "brokenimport", bad)
        assert subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode != 0
        stats = pipeline.run_all(ctx)
    assert stats["commits"] == {"selected": 2, "ready": 1, "failed": [bad]}
    instances = ctx.store.read_json(ctx.store.instances)
    assert instances and {item["commit"] for item in instances} == {good}
