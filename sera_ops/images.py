"""One container image per commit: the snapshot in /testbed on the platform's base image, installed, pushed.

Built with the docker SDK from a locally built base image (nothing is pulled from Docker Hub). When no engine can be
reached, the commit gets a *local* sandbox instead — the same snapshot, run on this machine without isolation — and
that choice is logged loudly, because install commands are not run there.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from sera_ops.config import ImageSettings, RegistrySettings

log = logging.getLogger(__name__)

TESTBED = "/testbed"


class ImageBuildError(RuntimeError):
    """Building or pushing a commit's image failed; the message carries the tail of the build log."""


@dataclass(frozen=True)
class ImageRef:
    """Where rollouts for one commit run: a pushed image (`kind="docker"`) or a local snapshot (`kind="local"`)."""

    repo: str
    commit: str
    kind: Literal["docker", "local"]
    workdir: str
    image: str | None = None
    digest: str | None = None
    python: str | None = None
    reused: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ImageRef:
        return cls(**data)


def docker_client() -> Any | None:
    """A connected docker SDK client (DOCKER_HOST or the default socket), or None when no engine answers."""
    import docker

    try:
        client = docker.from_env(timeout=120)
        client.ping()
        return client
    except Exception as exc:  # the SDK raises several unrelated types for "no engine here"
        log.info("no Docker engine reachable (%s)", exc.__class__.__name__)
        return None


def image_name(registry: RegistrySettings, repo: str, commit: str) -> str:
    return f"{registry.url}/{registry.namespace}/{repo}:{commit[:12]}".lower()


def render_dockerfile(base_image: str, install_cmds: list[str], repo: str, commit: str) -> str:
    """Install steps run after the snapshot commit; whatever they leave behind (egg-info, build dirs) is git-excluded
    so it never shows up in an agent's patch."""
    lines = [f"FROM {base_image}", f"COPY testbed/ {TESTBED}/", f"WORKDIR {TESTBED}"]
    lines += [f"RUN {cmd}" for cmd in install_cmds]
    lines += [
        "RUN git ls-files --others --exclude-standard --directory | sed 's|^|/|' >> .git/info/exclude "
        "&& test -z \"$(git status --porcelain)\"",
        f'LABEL sera.repo="{repo}" sera.commit="{commit}"',
    ]
    return "\n".join(lines) + "\n"


def build_context(snapshot_dir: Path, dockerfile: str) -> bytes:
    """A tar build context: the Dockerfile plus the snapshot (its .git included) under testbed/."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(snapshot_dir, arcname="testbed")
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def build_hash(dockerfile: str, snapshot_commit: str) -> str:
    return hashlib.sha256(f"{dockerfile}\0{snapshot_commit}".encode()).hexdigest()[:16]


def build_commit_image(client: Any, *, repo: str, commit: str, snapshot_dir: Path, install_cmds: list[str],
                       images: ImageSettings, registry: RegistrySettings, registry_password: str | None,
                       python_version: str | None) -> ImageRef:
    """Build (or reuse, when an identical build exists locally) and push the commit's image."""
    import docker.errors

    try:
        client.images.get(images.base_image)
    except docker.errors.ImageNotFound:
        raise ImageBuildError(f"base image '{images.base_image}' is not in the Docker engine; build it with "
                              "scripts/build_base_image.sh or set images.base_image in platform.yaml") from None
    dockerfile = render_dockerfile(images.base_image, install_cmds, repo, commit)
    tag = image_name(registry, repo, commit)
    fingerprint = build_hash(dockerfile, commit)
    image, reused = _existing_build(client, tag, fingerprint), True
    if image is None:
        reused = False
        context = build_context(snapshot_dir, dockerfile)
        try:
            image, _ = client.images.build(fileobj=io.BytesIO(context), custom_context=True, tag=tag, pull=False,
                                           rm=True, forcerm=True, network_mode=images.build_network,
                                           labels={"sera.build": fingerprint})
        except docker.errors.BuildError as exc:
            tail = "".join(chunk.get("stream", "") or chunk.get("error", "") for chunk in exc.build_log)[-3000:]
            raise ImageBuildError(f"building {tag} failed: {exc.msg}\n--- build log (tail) ---\n{tail}") from None
    python = _python_version(client, tag)
    if python_version and not python.startswith(f"Python {python_version}"):
        log.warning("repo %s asks for python_version %s but the image has %s; set images.base_image to a base "
                    "with that Python", repo, python_version, python)
    digest = push(client, tag, registry, registry_password) if registry.push else None
    return ImageRef(repo=repo, commit=commit, kind="docker", workdir=TESTBED, image=tag, digest=digest,
                    python=python, reused=reused)


def _existing_build(client: Any, tag: str, fingerprint: str) -> Any | None:
    import docker.errors

    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None
    return image if image.labels.get("sera.build") == fingerprint else None


def _python_version(client: Any, tag: str) -> str:
    output = client.containers.run(tag, ["python3", "--version"], network_mode="none", remove=True)
    return output.decode().strip()


def push(client: Any, tag: str, registry: RegistrySettings, password: str | None) -> str | None:
    """Push and return the digest. The SDK reports failures inside the stream, not as exceptions: check each chunk."""
    repository, _, version = tag.rpartition(":")
    auth = {"username": registry.username, "password": password} if registry.username and password else None
    digest = None
    for chunk in client.images.push(repository, tag=version, stream=True, decode=True, auth_config=auth):
        if "error" in chunk:
            raise ImageBuildError(f"pushing {tag} to {registry.url} failed: {chunk['error']}; check that the "
                                  "registry runs and, if it needs a login, registry.username and credentials")
        digest = (chunk.get("aux") or {}).get("Digest", digest)
    return digest


def local_sandbox(repo: str, commit: str, snapshot_dir: Path) -> ImageRef:
    log.warning("repo %s commit %s: no Docker engine reachable, rollouts run in a LOCAL sandbox (a private copy of "
                "the snapshot on this machine, no isolation, install_cmds not run). Start an engine and set "
                "DOCKER_HOST to use containers.", repo, commit[:12])
    return ImageRef(repo=repo, commit=commit, kind="local", workdir=str(snapshot_dir))
