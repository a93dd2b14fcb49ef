"""What decides an image (no engine needed): dependency inputs, the build backend, smoke modules, bases per Python
version, build environments and their secrets, and reading labels from a registry's HTTP API."""
import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from sera_ops.build import images
from sera_ops.build.registry import RegistryClient, RegistryError, split_reference
from sera_ops.settings import ConfigError, ImageSettings, RepoSpec, SecretRef, load_platform
from sera_ops.testing.loopback import LoopbackServer
from tests.support import ROOT
from tests.support.parts import require

PYPROJECT = """[build-system]
requires = ["hatchling>=1.20"]
build-backend = "hatchling.build"

[project]
name = "demo"
version = "{version}"
description = "{description}"
dependencies = [{dependencies}]
"""


def write_project(folder: Path, version="1.0", description="a demo", dependencies='"requests>=2"') -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(PYPROJECT.format(version=version, description=description,
                                                            dependencies=dependencies))
    return folder


def spec(**settings) -> RepoSpec:
    return RepoSpec(name="demo", source="/nowhere", source_file=Path("/cfg/repos/demo.yaml"), **settings)


def test_a_version_bump_keeps_the_dependency_inputs_and_a_new_dependency_changes_them(tmp_path):
    first = images.dependency_inputs(write_project(tmp_path / "a"))
    assert images.dependency_inputs(write_project(tmp_path / "b", version="1.1", description="other")) == first
    assert images.dependency_inputs(write_project(tmp_path / "c", dependencies='"requests>=2", "idna"')) != first
    requirements = write_project(tmp_path / "d")
    (requirements / "requirements-dev.txt").write_text("pytest\n")
    (requirements / "requirements").mkdir()
    (requirements / "requirements" / "docs.txt").write_text("sphinx\n")
    assert set(images.dependency_inputs(requirements)) == {"pyproject.toml", "requirements-dev.txt"}
    named = images.dependency_inputs(requirements, ["pip install -e . -r requirements/docs.txt", "echo 'unbalanced"])
    assert set(named) == {"pyproject.toml", "requirements-dev.txt", "requirements/docs.txt"}


def test_the_build_backend_comes_from_pyproject_or_setuptools_for_setup_py(tmp_path):
    assert images.build_requirements(write_project(tmp_path / "a")) == ["hatchling>=1.20"]
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "setup.py").write_text("from setuptools import setup\nsetup()\n")
    assert images.build_requirements(legacy) == ["setuptools>=40.8.0", "wheel"]
    assert images.build_requirements(tmp_path) == []


def test_smoke_modules_are_the_code_folders_packages(tmp_path):
    for package in ("src/alpha", "src/beta", "src/not-a-package"):
        (tmp_path / package).mkdir(parents=True)
    (tmp_path / "src/alpha/__init__.py").write_text("")
    (tmp_path / "src/beta/__init__.py").write_text("")
    assert images.smoke_modules(tmp_path, "demo", ["src"]) == ["alpha", "beta"]
    assert images.smoke_modules(tmp_path, "demo", ["src/alpha"]) == ["alpha"]
    assert images.smoke_modules(tmp_path, "demo", ["missing"]) == []


def test_a_python_version_without_a_base_fails_naming_the_file_the_version_and_the_bases():
    settings = ImageSettings(base_images={"3.11": "sera-base:bookworm"})
    with pytest.raises(images.ImageBuildError) as failure:
        images.build_recipe(settings, spec(python_version="3.12"))
    message = str(failure.value)
    assert failure.value.permanent
    assert "/cfg/repos/demo.yaml" in message and "'3.12'" in message and "3.11 -> sera-base:bookworm" in message
    assert images.build_recipe(settings, spec(python_version="3.11")).base_image == "sera-base:bookworm"
    assert images.build_recipe(settings, spec()).base_image == settings.base_image
    template = ImageSettings(base_images="python:{version}-slim")
    assert images.build_recipe(template, spec(python_version="3.12")).base_image == "python:3.12-slim"


def test_a_base_image_template_must_name_the_version(tmp_path):
    platform = (ROOT / "config" / "platform.yaml").read_text()
    bad = tmp_path / "platform.yaml"
    bad.write_text(platform.replace('base_images: {"3.11": sera-base:bookworm}', 'base_images: "python-slim"'))
    with pytest.raises(ConfigError, match=r"images.base_images.*must contain '\{version\}'"):
        load_platform(bad)


def test_build_env_secrets_are_resolved_kept_out_of_the_fingerprint_and_repo_values_win(monkeypatch):
    monkeypatch.setenv("SERA_TEST_INDEX", "https://user:hunter2-secret@pypi.example/simple")
    settings = ImageSettings(build_env={"PIP_INDEX_URL": SecretRef(env="SERA_TEST_INDEX"), "PIP_TRUSTED_HOST": "a"})
    recipe = images.build_recipe(settings, spec(install_env={"PIP_TRUSTED_HOST": "b"}))
    assert recipe.env == {"PIP_INDEX_URL": "https://user:hunter2-secret@pypi.example/simple", "PIP_TRUSTED_HOST": "b"}
    assert recipe.env_for_fingerprint() == {"PIP_INDEX_URL": "<secret>", "PIP_TRUSTED_HOST": "b"}
    assert recipe.secrets == ["https://user:hunter2-secret@pypi.example/simple"]
    assert "hunter2" not in repr(recipe)
    monkeypatch.delenv("SERA_TEST_INDEX")
    with pytest.raises(images.ImageBuildError, match="images.build_env.PIP_INDEX_URL: the secret is not set"):
        images.build_recipe(settings, spec())


class _Registry(LoopbackServer):
    """The three registry answers `labels` needs: a manifest, a config blob, and 404 for anything else."""

    name = "registry double"

    def __init__(self, labels: dict[str, str]):
        super().__init__()
        self.labels = labels

    class handler(BaseHTTPRequestHandler):  # noqa: N801 (LoopbackServer's attribute)
        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/v2/sera/demo/manifests/abc":
                body = {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                        "config": {"digest": "sha256:c0ffee"}}
            elif self.path == "/v2/sera/demo/blobs/sha256:c0ffee":
                body = {"config": {"Labels": self.server.double.labels}}
            else:
                self.send_response(404)
                self.end_headers()
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: object) -> None:
            pass


def test_registry_labels_are_read_without_pulling_and_a_missing_tag_is_none():
    with _Registry({"sera.build": "f00"}) as registry:
        host = registry.address.removeprefix("http://")
        client = RegistryClient()
        assert client.labels(f"{host}/sera/demo:abc") == {"sera.build": "f00"}
        assert client.labels(f"{host}/sera/demo:other") is None
    with pytest.raises(RegistryError, match="cannot be reached"):
        RegistryClient(timeout_s=2).labels(f"{host}/sera/demo:abc")
    assert split_reference("127.0.0.1:5000/sera/x:1") == ("127.0.0.1:5000", "sera/x", "1")
    with pytest.raises(RegistryError, match="names no registry host"):
        split_reference("sera-base:bookworm")


@pytest.mark.docker
def test_the_same_rootfs_imported_twice_fingerprints_the_same_so_engines_share_images(tmp_path):
    """Two engines that each imported the base get different image ids (each import stamps its own time); the
    fingerprint must follow the content, or every worker's engine would rebuild what another pushed."""
    import io
    import tarfile
    import time

    import docker

    require("docker")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        data = b"same content\n"
        member = tarfile.TarInfo("etc/marker")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    client = docker.from_env()
    tags = [f"sera-test-import:{n}" for n in ("a", "b")]
    try:
        imported = []
        for tag in tags:
            client.api.import_image_from_data(archive.getvalue(), repository=tag.split(":")[0], tag=tag.split(":")[1])
            imported.append(client.images.get(tag))
            time.sleep(1.1)  # image creation times are in seconds
        first, second = imported
        assert first.id != second.id
        assert images._content_identity(first) == images._content_identity(second)
    finally:
        for tag in tags:
            client.images.remove(tag, force=True)
        client.close()


def test_the_uploaded_tree_belongs_to_root_whoever_builds(tmp_path):
    """A worker running as uid 50000 (the compose Airflow image) makes the same image as one running as root."""
    import io
    import os
    import tarfile

    write_project(tmp_path / "snap")
    os.chown(tmp_path / "snap" / "pyproject.toml", 50000, 50000)
    with tarfile.open(fileobj=io.BytesIO(images._step_files(tmp_path / "snap", "X=1\n"))) as tar:
        owners = {(member.uid, member.gid, member.uname, member.gname) for member in tar.getmembers()}
    assert owners == {(0, 0, "root", "root")}
