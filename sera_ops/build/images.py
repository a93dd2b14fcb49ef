"""One container image per commit: the snapshot in /testbed on a Python base image, installed, smoke-checked, pushed.

An image is built in two layers, each made by running a step in a container and committing it (what `docker build`
does, minus a Dockerfile):

1. the **dependency layer**, keyed by the install inputs (base image, Python version, `install_cmds`, the build
   environment minus secret values, and hashes of the files that declare dependencies). It runs `install_cmds` on
   the first commit that needs it and is shared, locally and through the registry, by every commit whose inputs
   match — a version bump in `pyproject.toml` does not invalidate it;
2. the **commit layer**: that commit's source copied to /testbed and installed without dependencies.

Install steps see `build_env` through a file that the step deletes before anything is committed, so neither secrets
nor proxy settings end up in an image layer or its config. Each image then runs a smoke check (by default: import
every package of the code folders, with no network) before it is tagged; an image that fails it is never used.
Before building, the local engine and then the registry are asked for an image with the same fingerprint.

When no engine can be reached, the commit gets a *local* sandbox instead — the same snapshot, run on this machine —
and that choice is logged loudly, because install commands are not run there.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import shlex
import tarfile
import tomllib
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from sera_ops.build.inventory import InventoryError, detect_code_folders
from sera_ops.build.registry import RegistryClient, RegistryError
from sera_ops.redaction import redact
from sera_ops.settings import ImageSettings, RegistrySettings, RepoSpec, SecretLookup, SecretRef, resolve_secret

log = logging.getLogger(__name__)

TESTBED = "/testbed"
LAYOUT_VERSION = 3  # bump when the steps below change what an image contains
BUILD_ENV_FILE = "/.sera-build-env"
DEFAULT_SOURCE_INSTALL = ("if [ -f pyproject.toml ] || [ -f setup.py ]; then "
                          "pip install --no-deps --no-build-isolation --no-cache-dir -e .; fi")
# Whatever the install steps leave in the work tree (egg-info, build dirs) is git-excluded, so that it never shows up
# in an agent's patch; the tree must then be clean.
EXCLUDE_INSTALL_LEFTOVERS = ("git ls-files --others --exclude-standard --directory | sed 's|^|/|' "
                             ">> .git/info/exclude && test -z \"$(git status --porcelain)\"")
DEPENDENCY_FILES = ("pyproject.toml", "setup.py", "setup.cfg", "Pipfile", "Pipfile.lock", "poetry.lock", "uv.lock",
                    "pdm.lock", "environment.yml")
_PYPROJECT_DEPENDENCY_KEYS = (("build-system",), ("project", "dependencies"), ("project", "optional-dependencies"),
                              ("project", "requires-python"), ("project", "dynamic"), ("dependency-groups",),
                              ("tool", "poetry", "dependencies"), ("tool", "poetry", "group"),
                              ("tool", "poetry", "dev-dependencies"), ("tool", "pdm", "dev-dependencies"),
                              ("tool", "uv"))
SMOKE_FAILED = "SERA_SMOKE_FAILED"
SMOKE_STARTS = "SERA_SMOKE_STARTS"
_PYTHON_PROBE = "python3 -c 'import sys; print(\"SERA_PYTHON %d.%d.%d\" % sys.version_info[:3])'"
_IMPORT_ALL = """import importlib, sys, traceback
failed = 0
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except BaseException as error:
        failed += 1
        traceback.print_exc()
        print(f"SMOKE_FAILED {name}: {type(error).__name__}: {error}")
sys.exit(1 if failed else 0)
""".replace("SMOKE_FAILED", SMOKE_FAILED)


class ImageBuildError(RuntimeError):
    """Building, checking or pushing a commit's image failed; the message carries the tail of the step's output.

    `permanent` errors (a failing install command or smoke check, a missing base) come back on every retry; the
    others (engine or registry hiccups) may heal.
    """

    def __init__(self, message: str, *, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class ImageRef:
    """Where rollouts for one commit run: an image (`kind="docker"`) or a local snapshot (`kind="local"`).

    `origin` says how the image was obtained: built here, found in the local engine, or pulled from the registry.
    """

    repo: str
    commit: str
    kind: Literal["docker", "local"]
    workdir: str
    image: str | None = None
    digest: str | None = None
    python: str | None = None
    origin: Literal["built", "local", "registry", "existing", "none"] = "none"
    dependency_image: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ImageRef:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass(frozen=True)
class BuildRecipe:
    """Everything that decides a repository's image content, resolved from the platform and repository files."""

    repo: str
    base_image: str
    python_version: str | None
    install_cmds: list[str]
    source_install_cmds: list[str]
    dependency_layer: bool
    smoke_cmd: str | None
    network: str
    timeout_s: float
    env: dict[str, str] = field(repr=False)
    secret_env: frozenset[str] = frozenset()

    @property
    def secrets(self) -> list[str]:
        return [self.env[name] for name in self.secret_env if self.env.get(name)]

    def env_for_fingerprint(self) -> dict[str, str]:
        """Secret values are left out: rotating a token must not rebuild every image."""
        return {key: ("<secret>" if key in self.secret_env else value) for key, value in sorted(self.env.items())}


def build_recipe(images: ImageSettings, spec: RepoSpec, connection_lookup: SecretLookup | None = None) -> BuildRecipe:
    """The recipe for `spec`; a Python version without a base and an unresolvable secret are permanent errors."""
    base = images.base_for(spec.python_version)
    if base is None:
        raise ImageBuildError(
            f"{spec.source_file}: python_version {spec.python_version!r} has no base image (configured bases: "
            f"{images.describe_bases()}); add it to images.base_images in the platform file, or build one with "
            "scripts/build_base_image.sh", permanent=True)
    env: dict[str, str] = {}
    secret_env: set[str] = set()
    for origin, settings in (("images.build_env", images.build_env), ("install_env", spec.install_env)):
        for name, value in settings.items():
            if isinstance(value, SecretRef):
                resolved = resolve_secret(value, connection_lookup)
                if resolved is None:
                    raise ImageBuildError(
                        f"{origin}.{name}: the secret is not set (connection {value.connection!r}, env "
                        f"{value.env!r}); define it in Airflow or the worker's environment", permanent=True)
                env[name] = resolved
                secret_env.add(name)
            else:
                env[name] = value
                secret_env.discard(name)
    source_cmds = spec.source_install_cmds if spec.source_install_cmds is not None else [DEFAULT_SOURCE_INSTALL]
    return BuildRecipe(repo=spec.name, base_image=base, python_version=spec.python_version,
                       install_cmds=list(spec.install_cmds), source_install_cmds=list(source_cmds),
                       dependency_layer=spec.dependency_layer, smoke_cmd=spec.smoke_cmd, network=images.build_network,
                       timeout_s=images.build_timeout_s, env=env, secret_env=frozenset(secret_env))


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


def dependency_image_name(registry: RegistrySettings, repo: str, key: str) -> str:
    return f"{registry.url}/{registry.namespace}/{repo}-deps:{key[:16]}".lower()


# ---------------------------------------------------------------- what decides the layers


def dependency_inputs(snapshot_dir: Path, install_cmds: list[str] = ()) -> dict[str, str]:
    """Hashes of the files that declare dependencies: the packaging files, top-level `requirements*.txt`, and any
    file an install command names (`-r requirements/test.txt`, `-c constraints.txt`). For pyproject.toml only the
    tables that declare dependencies count, so a version bump keeps the dependency layer."""
    snapshot_dir = Path(snapshot_dir)
    named = {token.split("=", 1)[-1] for command in install_cmds for token in _words(command)}
    candidates = [snapshot_dir / name for name in DEPENDENCY_FILES]
    candidates += sorted(snapshot_dir.glob("requirements*.txt"))
    candidates += [snapshot_dir / name for name in sorted(named) if name and not name.startswith("-")
                   and (snapshot_dir / name).resolve().is_relative_to(snapshot_dir.resolve())]
    inputs = {}
    for path in candidates:
        if not path.is_file() or path.relative_to(snapshot_dir).as_posix() in inputs:
            continue
        data = path.read_bytes()
        if path.name == "pyproject.toml":
            data = _pyproject_dependency_tables(data)
        inputs[path.relative_to(snapshot_dir).as_posix()] = hashlib.sha256(data).hexdigest()
    return inputs


def _words(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:  # unbalanced quotes: the shell will complain at build time; split roughly here
        return command.split()


def _pyproject_dependency_tables(raw: bytes) -> bytes:
    try:
        document = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return raw
    kept = {}
    for path in _PYPROJECT_DEPENDENCY_KEYS:
        value: Any = document
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            kept[".".join(path)] = value
    return json.dumps(kept, sort_keys=True, default=str).encode()


def build_requirements(snapshot_dir: Path) -> list[str]:
    """The build backend (PEP 518), installed in the dependency layer so the commit layer can build offline."""
    pyproject = Path(snapshot_dir) / "pyproject.toml"
    if pyproject.is_file():
        try:
            requires = tomllib.loads(pyproject.read_text()).get("build-system", {}).get("requires")
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            requires = None
        if requires:
            return [str(item) for item in requires]
    return ["setuptools>=40.8.0", "wheel"] if (Path(snapshot_dir) / "setup.py").is_file() else []


def smoke_modules(snapshot_dir: Path, spec_name: str, top_level_folder: list[str]) -> list[str]:
    """Top-level packages of the code folders: a package folder itself, or the packages inside a plain folder."""
    try:
        folders = detect_code_folders(Path(snapshot_dir), spec_name, top_level_folder)
    except InventoryError:
        return []
    modules: list[str] = []
    for folder in folders:
        path = Path(snapshot_dir) / folder
        if (path / "__init__.py").is_file():
            modules.append(path.name)
        else:
            modules += sorted(child.name for child in path.iterdir() if (child / "__init__.py").is_file())
    return [name for name in dict.fromkeys(modules) if name.isidentifier()]


def default_smoke_cmd(modules: list[str]) -> str:
    return "python3 -c " + shlex.quote(_IMPORT_ALL) + "".join(" " + shlex.quote(name) for name in modules)


def _fingerprint(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps({"layout": LAYOUT_VERSION, **data}, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- building


def build_commit_image(client: Any, recipe: BuildRecipe, *, commit: str, snapshot_dir: Path, top_level_folder:
                       list[str], registry: RegistrySettings, registry_password: str | None,
                       lock_dir: Path | None = None) -> ImageRef:
    """The commit's image: found (locally or in the registry) by its fingerprint, else built and smoke-checked; then
    pushed when the registry is configured to receive images."""
    snapshot_dir = Path(snapshot_dir)
    lookup = RegistryClient(registry.username, registry_password, registry.insecure)
    base_id = _content_identity(_present(client, recipe.base_image, registry, registry_password))
    smoke_cmd = recipe.smoke_cmd or default_smoke_cmd(smoke_modules(snapshot_dir, recipe.repo, top_level_folder))
    deps_key = _fingerprint({"base": base_id, "python": recipe.python_version, "install": recipe.install_cmds,
                             "requires": build_requirements(snapshot_dir), "env": recipe.env_for_fingerprint(),
                             "inputs": dependency_inputs(snapshot_dir, recipe.install_cmds),
                             "network": recipe.network}) \
        if recipe.dependency_layer else None
    install = recipe.source_install_cmds if deps_key else recipe.install_cmds
    build_key = _fingerprint({"deps": deps_key, "base": base_id, "commit": commit, "smoke": smoke_cmd,
                              "install": install})
    tag = image_name(registry, recipe.repo, commit)
    deps_tag = dependency_image_name(registry, recipe.repo, deps_key) if deps_key else None
    found = _find(client, tag, "sera.build", build_key, lookup, registry, registry_password)
    if found:
        image, origin = found
        python = _python_of(client, image)
    else:
        image, python = _build(client, recipe, commit, snapshot_dir, build_key, deps_key, deps_tag, smoke_cmd,
                               lock_dir, lookup, registry, registry_password)
        image.tag(*tag.rsplit(":", 1))
        origin = "built"
        log.info("repo %s commit %s: built %s (python %s)", recipe.repo, commit[:12], tag, python)
    if recipe.python_version and python != recipe.python_version and \
            not python.startswith(recipe.python_version + "."):
        raise ImageBuildError(f"repo {recipe.repo}: python_version is {recipe.python_version} but its base "
                              f"{recipe.base_image} has Python {python}; fix images.base_images", permanent=True)
    digest = push(client, tag, registry, registry_password) if registry.push and origin != "registry" else None
    return ImageRef(repo=recipe.repo, commit=commit, kind="docker", workdir=TESTBED, image=tag, digest=digest,
                    python=python, origin=origin, dependency_image=deps_tag)


def _build(client: Any, recipe: BuildRecipe, commit: str, snapshot_dir: Path, build_key: str, deps_key: str | None,
           deps_tag: str | None, smoke_cmd: str, lock_dir: Path | None, lookup: RegistryClient,
           registry: RegistrySettings, password: str | None) -> tuple[Any, str]:
    """Build the commit image and smoke-check it; returns the (untagged) image and its Python version.

    On a dependency layer the commit step needs no network (nothing is downloaded), so it runs offline and the smoke
    check runs in the same container before anything is committed. Without one, install_cmds need the build network
    and the smoke check gets a container of its own, without network, afterwards.
    """
    labels = {"sera.repo": recipe.repo, "sera.commit": commit, "sera.build": build_key}
    if deps_key and deps_tag:
        with _lock(lock_dir, f"deps-{deps_key}"):
            parent = _dependency_image(client, recipe, snapshot_dir, deps_tag, deps_key, lookup, registry, password)
        script = [f"cd {TESTBED}", *recipe.source_install_cmds, EXCLUDE_INSTALL_LEFTOVERS, f"echo {SMOKE_STARTS}",
                  _PYTHON_PROBE, smoke_cmd]
        image, output = _run_step(client, recipe, parent, script, snapshot_dir, labels, network="none",
                                  what=f"installing commit {commit[:12]}", commit=commit)
    else:
        script = [f"cd {TESTBED}", *recipe.install_cmds, EXCLUDE_INSTALL_LEFTOVERS]
        image, _ = _run_step(client, recipe, recipe.base_image, script, snapshot_dir, labels, network=recipe.network,
                             what=f"installing commit {commit[:12]}", commit=commit)
        output = _smoke_check(client, image, smoke_cmd, recipe, commit)
    return image, _python_in(output)


def _dependency_image(client: Any, recipe: BuildRecipe, snapshot_dir: Path, deps_tag: str, deps_key: str,
                      lookup: RegistryClient, registry: RegistrySettings, password: str | None) -> str:
    """The shared dependency layer's image id: reused when its fingerprint matches, else built (and pushed)."""
    found = _find(client, deps_tag, "sera.deps", deps_key, lookup, registry, password)
    if found:
        log.info("repo %s: reusing dependency layer %s (%s)", recipe.repo, deps_tag, found[1])
        return found[0].id
    requires = build_requirements(snapshot_dir)
    script = [f"cd {TESTBED}", *recipe.install_cmds]
    if requires:
        script.append("pip install " + " ".join(shlex.quote(item) for item in requires))
    script.append(f"cd / && rm -rf {TESTBED}")
    image, _ = _run_step(client, recipe, recipe.base_image, script, snapshot_dir,
                         {"sera.repo": recipe.repo, "sera.deps": deps_key}, network=recipe.network,
                         what="installing dependencies")
    image.tag(*deps_tag.rsplit(":", 1))
    log.info("repo %s: built dependency layer %s", recipe.repo, deps_tag)
    if registry.push:
        push(client, deps_tag, registry, password)
    return image.id


def _run_step(client: Any, recipe: BuildRecipe, parent: str, script: list[str], snapshot_dir: Path,
              labels: dict[str, str], *, network: str, what: str, commit: str = "") -> tuple[Any, str]:
    """Run `script` (bash, stop at the first failure) in a container of `parent` with the snapshot at /testbed, and
    commit the result; returns the image and the step's output. The build environment is a file the script
    sources and deletes first: never committed. A failure after the smoke marker is a failed smoke check."""
    parent_config = client.images.get(parent).attrs["Config"]
    env_file = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in recipe.env.items())
    command = f". {BUILD_ENV_FILE} && rm -f {BUILD_ENV_FILE} && set -ex\n" + "\n".join(script)
    container = client.containers.create(parent, ["bash", "-c", command], network_mode=network,
                                         working_dir="/", user="0", labels={"sera.build-step": recipe.repo})
    try:
        container.put_archive("/", _step_files(snapshot_dir, env_file))
        container.start()
        try:
            status = container.wait(timeout=recipe.timeout_s)
        except Exception as error:  # the SDK signals a timeout with requests' exceptions
            container.kill()
            raise ImageBuildError(f"repo {recipe.repo}: {what} took longer than {recipe.timeout_s:.0f}s "
                                  f"(images.build_timeout_s) and was stopped ({type(error).__name__})") from None
        output = redact(container.logs().decode(errors="replace"), recipe.secrets)
        if status.get("StatusCode") != 0:
            if f"\n{SMOKE_STARTS}\n" in f"\n{output}":
                raise _smoke_failure(recipe, commit, output)
            raise ImageBuildError(f"repo {recipe.repo}: {what} failed (exit {status.get('StatusCode')}) on "
                                  f"{parent[:40]}; fix install_cmds or the build environment\n--- output (tail) "
                                  f"---\n{output[-3000:]}", permanent=True)
        config = {"Env": parent_config.get("Env") or [], "Cmd": parent_config.get("Cmd") or ["/bin/bash"],
                  "WorkingDir": TESTBED, "Labels": labels, "User": parent_config.get("User") or ""}
        return container.commit(conf=config, message=what), output
    finally:
        container.remove(force=True)


def _smoke_check(client: Any, image: Any, smoke_cmd: str, recipe: BuildRecipe, commit: str) -> str:
    """Run the smoke check without network; on failure the image is deleted and the error names the module."""
    container = client.containers.create(image.id, ["bash", "-c", f"{_PYTHON_PROBE} && {smoke_cmd}"],
                                         network_mode="none", working_dir=TESTBED)
    try:
        container.start()
        try:
            status = container.wait(timeout=600)
        except Exception:
            container.kill()
            status = {"StatusCode": "timeout"}
        output = redact(container.logs().decode(errors="replace"), recipe.secrets)
    finally:
        container.remove(force=True)
    if status.get("StatusCode") != 0:
        client.images.remove(image.id, force=True)
        raise _smoke_failure(recipe, commit, output)
    return output


def _smoke_failure(recipe: BuildRecipe, commit: str, output: str) -> ImageBuildError:
    failed = [line.split(" ", 1)[1] for line in output.splitlines() if line.startswith(SMOKE_FAILED + " ")]
    headline = f"could not import {'; '.join(failed)}" if failed else "the smoke command failed"
    return ImageBuildError(f"repo {recipe.repo} commit {commit[:12]}: smoke check failed: {headline}; the image is "
                           "not used. Add the missing dependency to the project or install_cmds, or set smoke_cmd"
                           f"\n--- output (tail) ---\n{output[-3000:]}", permanent=True)


def _python_in(output: str) -> str:
    return next((line.split()[1] for line in output.splitlines() if line.startswith("SERA_PYTHON ")), "")


def _python_of(client: Any, image: Any) -> str:
    return _python_in(client.containers.run(image.id, ["bash", "-c", _PYTHON_PROBE], network_mode="none",
                                            remove=True).decode())


def _find(client: Any, reference: str, label: str, value: str, lookup: RegistryClient, registry: RegistrySettings,
          password: str | None) -> tuple[Any, Literal["local", "registry"]] | None:
    """An image for `reference` whose `label` is `value`: in the local engine, else pulled from the registry."""
    import docker.errors

    try:
        image = client.images.get(reference)
        if image.labels.get(label) == value:
            return image, "local"
    except docker.errors.ImageNotFound:
        pass
    try:
        labels = lookup.labels(reference)
    except RegistryError as error:
        log.warning("cannot ask the registry for %s (%s); building it", reference, error)
        return None
    if not labels or labels.get(label) != value:
        return None
    repository, _, tag = reference.rpartition(":")
    image = client.images.pull(repository, tag=tag, auth_config=_auth(registry, password))
    log.info("pulled %s from the registry (same fingerprint: not rebuilt)", reference)
    return image, "registry"


def _content_identity(image: Any) -> str:
    """What the base contributes to a fingerprint: its layers' content digests and the runtime config, not its image
    id, which differs between engines that imported the same rootfs (each import stamps its own creation time). So
    every worker's engine computes the same fingerprints and pulls what another built."""
    config = image.attrs.get("Config") or {}
    runtime = {key: config.get(key) for key in ("Env", "Cmd", "Entrypoint", "WorkingDir", "User")}
    return _fingerprint({"layers": image.attrs["RootFS"]["Layers"], "config": runtime})


def _present(client: Any, reference: str, registry: RegistrySettings, password: str | None) -> Any:
    """The base image in the local engine, pulled when missing; a clear, permanent error when it cannot be had."""
    import docker.errors

    try:
        return client.images.get(reference)
    except docker.errors.ImageNotFound:
        pass
    name, _, tag = reference.rpartition(":")
    repository, tag = (name, tag) if name and "/" not in tag else (reference, "latest")
    try:
        return client.images.pull(repository, tag=tag, auth_config=_auth(registry, password))
    except docker.errors.APIError as error:
        raise ImageBuildError(f"base image '{reference}' is not in the Docker engine and cannot be pulled "
                              f"({error.explanation or error}); build it with scripts/build_base_image.sh or fix "
                              "images.base_image / images.base_images in the platform file", permanent=True) from None


def _auth(registry: RegistrySettings, password: str | None) -> dict | None:
    return {"username": registry.username, "password": password} if registry.username and password else None


def push(client: Any, tag: str, registry: RegistrySettings, password: str | None) -> str | None:
    """Push and return the digest. The SDK reports failures inside the stream, not as exceptions: check each chunk."""
    repository, _, version = tag.rpartition(":")
    digest = None
    for chunk in client.images.push(repository, tag=version, stream=True, decode=True,
                                    auth_config=_auth(registry, password)):
        if "error" in chunk:
            raise ImageBuildError(f"pushing {tag} to {registry.url} failed: {chunk['error']}; check that the "
                                  "registry runs and, if it needs a login, registry.username and credentials")
        digest = (chunk.get("aux") or {}).get("Digest", digest)
    return digest


@contextmanager
def _lock(lock_dir: Path | None, name: str):
    """Serialise builds of one dependency layer on this machine, so two commits' tasks share it instead of racing."""
    if lock_dir is None:
        yield
        return
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name[:40]}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """The image's files belong to root whoever built it: a worker running as uid 50000 (the Airflow image) and one
    running as root must make the same image, since both compute the same fingerprint and share it."""
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _step_files(snapshot_dir: Path, env_file: str) -> bytes:
    """One tar for one upload: the snapshot as /testbed and the build environment file (read-only to root)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(snapshot_dir, arcname=TESTBED.lstrip("/"), filter=_owned_by_root)
        data = env_file.encode()
        info = tarfile.TarInfo(BUILD_ENV_FILE.lstrip("/"))
        info.size, info.mode = len(data), 0o400
        tar.addfile(_owned_by_root(info), io.BytesIO(data))
    return buffer.getvalue()


def local_sandbox(repo: str, commit: str, snapshot_dir: Path) -> ImageRef:
    log.warning("repo %s commit %s: no Docker engine reachable, rollouts run in a LOCAL sandbox (a private copy of "
                "the snapshot on this machine, install_cmds not run). Start an engine and set DOCKER_HOST to use "
                "containers.", repo, commit[:12])
    return ImageRef(repo=repo, commit=commit, kind="local", workdir=str(snapshot_dir))
