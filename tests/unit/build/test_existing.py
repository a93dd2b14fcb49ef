"""Existing images as sources: the SWE-bench and SWE-smith naming rules, config validation, and a whole run on a
SWE-bench-style image that the pipeline has to pull from the loopback registry (nothing built)."""
import hashlib
import json
import subprocess
from pathlib import Path

import docker.errors
import pytest
import yaml

from sera_ops import pipeline
from sera_ops.build import existing
from sera_ops.pipeline.context import RunContext, RunParams
from sera_ops.settings import ConfigError, MirrorSettings, load_platform, load_repo
from sera_ops.sources.samples import build_sample_repo
from sera_ops.testing.dry_run import dry_run_platform
from sera_ops.testing.scripted_teacher import ScriptedTeacher, ScriptedTeacherConfig
from tests.support import ROOT
from tests.support.parts import require

INSTANCE_ID = "tinyledger__tinyledger-1"


def write_repo(directory: Path, name: str, data: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def platform():
    return load_platform(ROOT / "config" / "platform.yaml")


def test_swebench_names_follow_the_harness():
    assert existing.swebench_image("django__django-11099", "swebench", "x86_64", "latest") == \
        "swebench/sweb.eval.x86_64.django_1776_django-11099:latest"
    assert existing.swebench_image("Foo__Bar-7", "127.0.0.1:5000/swebench", "arm64", "v2") == \
        "127.0.0.1:5000/swebench/sweb.eval.arm64.foo_1776_bar-7:v2"


def test_swesmith_names_follow_the_profiles():
    assert existing.swesmith_image("getmoto__moto.694ce1f4", "jyangballin", "x86_64") == \
        "jyangballin/swesmith.x86_64.getmoto_1776_moto.694ce1f4"
    assert existing.swesmith_image("PyCQA__flake8.cf1542ce", "jyangballin", "x86_64") == \
        "jyangballin/swesmith.x86_64.pycqa_1776_flake8.cf1542ce"


def test_example_file_names_real_swebench_images(platform):
    spec = load_repo(ROOT / "config" / "examples" / "swebench-django.yaml", platform)
    found = existing.source_images(spec)
    assert spec.source == "swebench" and len(found) == 10
    assert found[0].image == "swebench/sweb.eval.x86_64.django_1776_django-7530:latest"
    assert {entry.workdir for entry in found} == {"/testbed"}
    assert len({entry.key[:7] for entry in found}) == len(found)  # instance ids stay unique


def test_keys_are_stable_and_images_can_be_picked_by_label_or_key(tmp_path, platform):
    data = {"source": "swesmith", "swesmith": {"repos": ["getmoto__moto.694ce1f4", "pandas-dev__pandas.95280573"]}}
    spec = load_repo(write_repo(tmp_path, "smith", data), platform)
    keys = existing.select(spec, [])
    assert keys == existing.select(load_repo(tmp_path / "smith.yaml", platform), [])
    assert keys[0].endswith("-getmoto__moto.694ce1f4")
    assert existing.select(spec, ["pandas-dev__pandas.95280573", keys[0][:8], "nope"]) == \
        [keys[1], keys[0], "nope"]


def test_custom_images_keep_their_workdir_and_commit(tmp_path, platform):
    data = {"source": "images", "images": [
        {"image": "registry.example/acme/env:1.2", "workdir": "/src/acme", "commit": "3f9a2c41"},
        {"image": "registry.example/acme/env:1.2", "workdir": "/src/other"}]}
    spec = load_repo(write_repo(tmp_path, "custom", data), platform)
    first, second = existing.source_images(spec)
    assert spec.source == "images"  # a keyword, not resolved as a path next to the file
    assert (first.image, first.workdir, first.commit) == ("registry.example/acme/env:1.2", "/src/acme", "3f9a2c41")
    assert second.commit is None and first.key != second.key


def test_selection_and_mirroring_need_no_repository(tmp_path, platform):
    data = {"source": "swebench", "swebench": {"instance_ids": ["django__django-11099", "django__django-11133"]}}
    spec = load_repo(write_repo(tmp_path, "bench", data), platform)
    mirrored = platform.model_copy(update={"storage_root": tmp_path / "store",
                                           "github": MirrorSettings(organisation="sera-mirrors")})
    ctx = RunContext.create(mirrored, spec, "run-1", RunParams(commits=["django__django-11133"]))
    (key,) = pipeline.select_commits(ctx)
    assert key.endswith("-django__django-11133") and pipeline.mirror(ctx, [key]) is None
    assert not ctx.store.repo_store.sources_dir.exists()


@pytest.mark.parametrize(("data", "field", "problem"), [
    ({"source": "swebench", "swebench": {"instance_ids": ["django-11099"]}}, "swebench.instance_ids",
     "not a SWE-bench instance id"),
    ({"source": "swesmith", "swesmith": {"repos": ["getmoto/moto"]}}, "swesmith.repos",
     "not a SWE-smith repository name"),
    ({"source": "images", "images": [{"image": "acme/env:1"}]}, "images.0.workdir", "required setting is missing"),
    ({"source": "images", "images": [{"image": "acme/env:1", "workdir": "src"}]}, "images.0.workdir",
     "String should match pattern"),
    ({"source": "swebench"}, "swebench", "required with 'source: swebench'"),
    ({"source": "bundled:tinyledger", "images": [{"image": "a/b:1", "workdir": "/w"}]}, "images",
     "only read with 'source: images'"),
    ({"source": "swebench", "swebench": {"instance_ids": ["a__b-1"], "namespace": "Docker.io/SWE"}},
     "swebench.namespace", "expected a registry namespace"),
])
def test_config_errors_name_the_file_and_field(tmp_path, platform, data, field, problem):
    path = write_repo(tmp_path, "bad", data)
    with pytest.raises(ConfigError) as raised:
        load_repo(path, platform)
    assert raised.value.file == str(path) and raised.value.field == field and problem in raised.value.problem


# ---------------------------------------------------------------- a real run on a pulled SWE-bench-style image


def sha256_tree(root: Path) -> dict[str, str]:
    return {"./" + str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in root.rglob("*") if path.is_file() and not path.is_symlink()}


@pytest.fixture(scope="module")
def swebench_image(tmp_path_factory, platform):
    """A SWE-bench-style instance image of the sample repository (its second commit in /testbed, installed), pushed
    to the loopback registry and removed locally, so that the pipeline has to pull it."""
    require("docker")
    import docker

    client = docker.from_env(timeout=300)
    work = tmp_path_factory.mktemp("swebench-image")
    sample = build_sample_repo("tinyledger", work / "testbed")
    history = subprocess.run(["git", "log", "--reverse", "--format=%H"], cwd=sample, capture_output=True, text=True,
                             check=True).stdout.split()
    (work / "Dockerfile").write_text(
        f"FROM {platform.images.base_image}\nCOPY testbed/ /testbed/\nWORKDIR /testbed\n"
        f"RUN git checkout --quiet {history[1]} && pip install --no-deps --no-build-isolation -e .\n")
    namespace = f"{platform.registry.url}/swebench"
    name = existing.swebench_image(INSTANCE_ID, namespace, "x86_64", "latest")
    assert name == f"{platform.registry.url}/swebench/sweb.eval.x86_64.tinyledger_1776_tinyledger-1:latest"
    image, _ = client.images.build(path=str(work), tag=name, pull=False, rm=True, network_mode="none")
    for chunk in client.images.push(name, stream=True, decode=True):
        assert "error" not in chunk, chunk
    client.images.remove(name)
    yield {"name": name, "namespace": namespace, "commit": history[1], "client": client}
    client.images.remove(name, force=True)


@pytest.mark.docker
def test_a_run_on_a_pulled_swebench_image_builds_nothing(tmp_path, swebench_image, monkeypatch):
    client, name = swebench_image["client"], swebench_image["name"]
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(name)
    write_repo(tmp_path / "repos", "swebench-tinyledger", {
        "source": "swebench", "swebench": {"instance_ids": [INSTANCE_ID], "namespace": swebench_image["namespace"]},
        "top_level_folder": ["tinyledger"], "rollout": {"step_limit": 20, "time_limit_s": 300, "command_timeout_s": 30},
        "batching": {"batch_size": 4}})
    monkeypatch.setenv("SERA_SCRIPTED_API_KEY", "sk-image-sources-test")
    with ScriptedTeacher(ScriptedTeacherConfig(api_key="sk-image-sources-test")) as teacher:
        platform_file = dry_run_platform(ROOT / "config" / "platform.yaml", tmp_path, teacher.url,
                                         storage_root=tmp_path / "store", repos_dir=tmp_path / "repos",
                                         overrides={"images": {"sandbox": "docker"}})
        platform = load_platform(platform_file)
        spec = load_repo(tmp_path / "repos" / "swebench-tinyledger.yaml", platform)
        ctx = RunContext.create(platform, spec, "run-1", RunParams(max_functions=4))
        stats = pipeline.run_all(ctx)

    (key,) = json.loads(ctx.store.commits.read_text())["commits"]
    assert key.endswith(INSTANCE_ID)
    ref = json.loads(ctx.store.image(key).read_text())
    assert (ref["kind"], ref["image"], ref["workdir"], ref["origin"]) == ("docker", name, "/testbed", "existing")
    assert ref["digest"].startswith("sha256:")
    pulled = client.images.get(name)  # the pipeline pulled it
    own = f"{platform.registry.url}/{platform.registry.namespace}/swebench-tinyledger"
    assert not [tag for image in client.images.list() for tag in image.tags if tag.startswith(own)]
    assert not pulled.labels.get("sera.build")

    snapshot = ctx.store.repo_store.snapshot_dir(key)
    inside = client.containers.run(name, ["sh", "-c", "cd /testbed && find . -type f -exec sha256sum {} +"],
                                   network_mode="none", remove=True).decode()
    image_files = {path: digest for digest, path in (line.split(None, 1) for line in inside.splitlines())}
    assert sha256_tree(snapshot) == image_files
    assert "./.git/HEAD" in image_files and "./tinyledger/__init__.py" in image_files
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=snapshot, capture_output=True, text=True).stdout.strip()
    marker = json.loads(snapshot.with_name(f"{snapshot.name}.image.json").read_text())
    assert head == marker["head"] == swebench_image["commit"] and marker["image_id"] == pulled.id

    assert stats["commits"]["ready"] == 1 and stats["functions"] > 0 and stats["instances"] == 4
    assert len(list(ctx.store.run_dir.rglob("rollout1.a*.traj.json"))) >= 4
    assert list(ctx.store.run_dir.rglob("rollout2.traj.json"))
    assert stats["records"]["t1"] > 0
    assert len((ctx.store.dataset_dir / "t1.jsonl").read_text().splitlines()) == stats["records"]["t1"]
    assert ctx.store.repo_store.inventory_path(key).exists()


@pytest.mark.docker
def test_an_image_that_cannot_be_pulled_is_named_in_the_error(tmp_path, swebench_image, platform):
    data = {"source": "swebench", "swebench": {"instance_ids": ["tinyledger__tinyledger-404"],
                                               "namespace": swebench_image["namespace"]}}
    spec = load_repo(write_repo(tmp_path, "missing", data), platform)
    storage = platform.model_copy(update={"storage_root": tmp_path / "store"})
    ctx = RunContext.create(storage, spec, "run-1")
    (key,) = pipeline.select_commits(ctx)
    with pytest.raises(existing.ImageSourceError, match="sweb.eval.x86_64.tinyledger_1776_tinyledger-404:latest "
                                                              "is not in the Docker engine and pulling it failed"):
        pipeline.build_image(ctx, key)
    assert not ctx.store.image(key).exists()
