"""`sera validate`'s checks beyond the schema: that each source can be read, base images exist, secrets are set.

They talk to git and the Docker engine, so they live here and not in `sera_ops.settings`, which stays a leaf that any
module (and the DAG processor, every 30 s) can import cheaply.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from sera_ops.build import images
from sera_ops.settings import IMAGE_SOURCES, ConfigError, PlatformConfig, RepoSpec, SecretRef
from sera_ops.sources.repos import GIT_ENV
from sera_ops.sources.samples import SAMPLE_REPOS


class Finding(BaseModel):
    """One result of `check_references`: errors make `sera validate` fail, warnings and notes are advice."""

    model_config = ConfigDict(frozen=True)

    level: Literal["error", "warning", "note"]
    file: str
    field: str
    problem: str

    def __str__(self) -> str:
        return str(ConfigError(self.file, self.field, self.problem))


GIT_REMOTE = re.compile(r"^[a-z+]+://|^[\w.-]+@[\w.-]+:")
SOURCE_CHECK_TIMEOUT_S = 20.0


def check_references(platform: PlatformConfig, specs: list[RepoSpec], *, check_sources: bool = True) -> list[Finding]:
    """What the schema cannot see, checked from this machine: secrets, base images, each source and referenced
    file. A secret that is not visible here is only a warning, because connections usually live in Airflow."""
    findings = _secret_findings(str(platform.source_file), platform)
    findings += _base_image_findings(platform, specs)
    for spec in specs:
        spec_file = str(spec.source_file)
        findings += _secret_findings(spec_file, spec)
        if check_sources:
            findings += _source_findings(spec_file, spec.source)
        if spec.synth.demo_issues is not None and not spec.synth.demo_issues.is_file():
            findings.append(Finding(level="error", file=spec_file, field="synth.demo_issues",
                                    problem=f"{spec.synth.demo_issues} does not exist; point it at a JSON file of "
                                            "demonstration issues or remove the setting to use the packaged pool"))
    return findings


def _secret_refs(value: object, path: str = "") -> list[tuple[str, SecretRef]]:
    """Every SecretRef inside a loaded config with its dotted field, wherever a section declares one."""
    if isinstance(value, SecretRef):
        return [(path, value)]
    if isinstance(value, BaseModel):
        items = [(name, getattr(value, name)) for name in type(value).model_fields]
    elif isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    else:
        return []
    return [found for key, item in items for found in _secret_refs(item, f"{path}.{key}" if path else str(key))]


def _secret_findings(file: str, config: BaseModel) -> list[Finding]:
    findings = []
    for field, ref in _secret_refs(config):
        conn_env = f"AIRFLOW_CONN_{ref.connection.upper()}" if ref.connection else None
        if (ref.env and os.environ.get(ref.env)) or (conn_env and os.environ.get(conn_env)):
            continue
        unset = " and ".join(name for name in (ref.env, conn_env) if name)
        advice = (f"fine if Airflow has the connection '{ref.connection}', else the secret is missing at run time"
                  if conn_env else "set it where the tasks run")
        findings.append(Finding(level="warning", file=file, field=field, problem=f"{unset} unset here; {advice}"))
    return findings


def _base_image_findings(platform: PlatformConfig, specs: list[RepoSpec]) -> list[Finding]:
    """Each built repository's base image must be defined, and be in the engine or pullable; the engine part is
    skipped when none answers here."""
    if platform.images.sandbox == "local":
        return []
    findings, needed = [], {}
    for spec in specs:
        if spec.source in IMAGE_SOURCES:
            continue
        base = platform.images.base_for(spec.python_version)
        if base is None:
            findings.append(Finding(level="error", file=str(spec.source_file), field="python_version",
                                    problem=f"{spec.python_version!r} has no base image (configured: "
                                            f"{platform.images.describe_bases()}); add one to images.base_images in "
                                            f"{platform.source_file}"))
        else:
            needed[base] = "images.base_images" if spec.python_version else "images.base_image"
    if not needed:
        return findings
    client = images.docker_client()
    if client is None:
        return [*findings, Finding(level="note", file=str(platform.source_file), field="images", problem=(
            f"base images not checked ({', '.join(sorted(needed))}): no Docker engine answers here"))]
    for image, field in sorted(needed.items()):
        problem = _image_problem(client, image)
        if problem:
            findings.append(Finding(level="error", file=str(platform.source_file), field=field, problem=(
                f"image '{image}' is not in the Docker engine and cannot be pulled ({problem}); build it with "
                "scripts/build_base_image.sh or name an image the engine can pull")))
    return findings


def _image_problem(client: Any, image: str) -> str | None:
    """Why the engine can neither find nor pull `image` (a registry lookup, nothing is downloaded), or None."""
    import docker.errors

    try:
        client.images.get(image)
        return None
    except docker.errors.ImageNotFound:
        pass
    try:
        client.images.get_registry_data(image)
        return None
    except docker.errors.DockerException as exc:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _source_findings(file: str, source: str) -> list[Finding]:
    """Whether the resolved `source` can be read from here, as `sources.repos.materialize` will need to."""
    def error(problem: str) -> list[Finding]:
        return [Finding(level="error", file=file, field="source", problem=problem)]

    if source.startswith("bundled:"):
        name = source.removeprefix("bundled:")
        return [] if name in SAMPLE_REPOS else error(f"no bundled sample '{name}' (available: "
                                                      f"{', '.join(SAMPLE_REPOS)})")
    if GIT_REMOTE.match(source):
        problem = _git_problem(["ls-remote", "--quiet", source, "HEAD"], Path.cwd())
        return error(f"{source} cannot be read: {problem}; check the URL, the network and git's credentials for "
                     "it") if problem else []
    if not Path(source).is_absolute():
        return [Finding(level="note", file=file, field="source",
                        problem=f"'{source}' is not checked by `sera validate`; a run checks it when it starts")]
    path = Path(source)
    if not path.is_dir():
        return error(f"{source} does not exist; give a local git checkout, a git URL or bundled:<sample>")
    if not (path / ".git").exists() and not (path / "HEAD").exists():
        return error(f"{source} is not a git repository; run `git init` and commit there, or point 'source' at a "
                     "checkout")
    if _git_problem(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], path):
        return error(f"{source} has no commit on HEAD; commit the code first (only committed history is used)")
    return []


def _git_problem(args: list[str], cwd: Path) -> str | None:
    """Why `git args` failed (stderr's last line, or a timeout), or None when it succeeded."""
    env = {"GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o ConnectTimeout=10"} | os.environ | GIT_ENV
    try:
        result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, timeout=SOURCE_CHECK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"git {args[0]} did not answer within {SOURCE_CHECK_TIMEOUT_S:.0f} s"
    if result.returncode == 0:
        return None
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else f"git {args[0]} exited with {result.returncode}"
