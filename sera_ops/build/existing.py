"""Existing images as sources (SERA §2.5): SWE-bench instance images, SWE-smith environment images, or any image that
holds a git checkout of the repository.

Nothing is built. Each configured image is one "commit" of the run: `build_image` makes sure the engine has the image
(pulling it when missing), the inventory reads the source out of the image (its workdir copied out once per image id
into the run store's snapshot cache, so the usual inventory code runs unchanged), and rollouts run in the image
itself.

A run's "commit" key for an image is `<12 hex>-<label>`: a hash of what the repository file says (instance id,
SWE-smith repository name, or image + workdir + commit) plus that label for people. It is not the base commit
because that is only known once the image is pulled (the key is needed before, to map the per-commit tasks), and two
SWE-bench instances may share a base commit; instance ids use the key's first 7 characters, so those are checked to be
unique. The commit found in the image is recorded next to its snapshot.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from sera_ops.build import images
from sera_ops.settings import IMAGE_SOURCES, SWESMITH_REPO_NAME, RegistrySettings, RepoSpec
from sera_ops.sources import repos
from sera_ops.store.io import atomic_write_json, read_json_or
from sera_ops.store.layout import RepoStore, safe_name

log = logging.getLogger(__name__)

INSTANCE_ID_PREFIX = 7
"""Instance ids carry this many characters of the commit key (functions.sample_instances), so they must differ."""


class ImageSourceError(repos.SourceError):
    """A configured image cannot be found, pulled or read; the message names the image and what to check."""


@dataclass(frozen=True)
class SourceImage:
    """One configured image: the run's key for it, the label it was configured by, and where its repository is."""

    key: str
    label: str
    image: str
    workdir: str
    commit: str | None = None


def is_image_source(spec: RepoSpec) -> bool:
    return spec.source in IMAGE_SOURCES


def swebench_image(instance_id: str, namespace: str, arch: str, tag: str) -> str:
    """The SWE-bench harness's instance image name (TestSpec.instance_image_key for a remote namespace): the id
    lower-cased, and every "__" of the whole name replaced by "_1776_"."""
    return f"{namespace}/sweb.eval.{arch}.{instance_id.lower()}:{tag}".replace("__", "_1776_")


def swesmith_image(repo_name: str, namespace: str, arch: str) -> str:
    """SWE-smith's environment image for a repository name `<owner>__<repo>.<commit8>` (RepoProfile.image_name)."""
    match = SWESMITH_REPO_NAME.match(repo_name)
    if match is None:
        raise ValueError(f"not a SWE-smith repository name (<owner>__<repo>.<commit8>): {repo_name!r}")
    owner, repo, commit = match.group("owner", "repo", "commit")
    return f"{namespace}/swesmith.{arch}.{owner}_1776_{repo}.{commit}".lower()


def image_key(identity: str, label: str) -> str:
    return f"{hashlib.sha256(identity.encode()).hexdigest()[:12]}-{safe_name(label)[:80]}"


def source_images(spec: RepoSpec) -> list[SourceImage]:
    """The images a repository file names, in file order."""
    if spec.source == "swebench":
        bench = spec.swebench
        found = [SourceImage(image_key(f"swebench:{instance_id}", instance_id), instance_id,
                             swebench_image(instance_id, bench.namespace, bench.arch, bench.tag), images.TESTBED)
                 for instance_id in bench.instance_ids]
    elif spec.source == "swesmith":
        smith = spec.swesmith
        found = [SourceImage(image_key(f"swesmith:{name}", name), name, swesmith_image(name, smith.namespace,
                                                                                      smith.arch), images.TESTBED)
                 for name in smith.repos]
    else:
        found = [SourceImage(image_key(f"image:{c.image}:{c.workdir}:{c.commit or ''}", c.image), c.image, c.image,
                             c.workdir, c.commit) for c in spec.images]
    prefixes = [entry.key[:INSTANCE_ID_PREFIX] for entry in found]
    clash = next((entry for entry, prefix in zip(found, prefixes, strict=True) if prefixes.count(prefix) > 1), None)
    if clash is not None:
        raise ImageSourceError(f"{spec.source_file}: two images get keys starting {clash.key[:INSTANCE_ID_PREFIX]} "
                               f"(one is {clash.label}); run them from separate repository files")
    return found


def select(spec: RepoSpec, wanted: list[str]) -> list[str]:
    """Every configured image's key, or those picked by key, key prefix or label (instance id, SWE-smith name,
    image). Unknown picks are kept as given, so that only their own build_image task fails, naming them."""
    found = source_images(spec)
    if not wanted:
        return [entry.key for entry in found]
    return [next((entry.key for entry in found if _picks(value, entry)), value) for value in wanted]


def _picks(value: str, entry: SourceImage) -> bool:
    return value in (entry.key, entry.label) or (len(value) >= INSTANCE_ID_PREFIX and entry.key.startswith(value))


def _entry(spec: RepoSpec, key: str) -> SourceImage:
    entry = next((entry for entry in source_images(spec) if entry.key == key), None)
    if entry is None:
        raise ImageSourceError(f"'{key}' is not one of the images in {spec.source_file} (section '{spec.source}'); "
                               "pick images by instance id, SWE-smith repository name, image or key")
    return entry


@dataclass(frozen=True)
class ImageAccess:
    """How to reach a source's images: the platform's sandbox mode (`images.sandbox`) and registry, with its login."""

    sandbox: str
    registry: RegistrySettings
    registry_password: str | None


def _image(spec: RepoSpec, entry: SourceImage, access: ImageAccess) -> Any:
    client = images.docker_client() if access.sandbox != "local" else None
    if client is None:
        raise ImageSourceError(f"repo {spec.name} runs in existing images ('source: {spec.source}'), which "
                               "needs a Docker engine: start one (scripts/services.sh) and set DOCKER_HOST, and leave "
                               "images.sandbox at 'auto' or 'docker'")
    return ensure_image(client, entry.image, access.registry, access.registry_password)


def ensure_image(client: Any, name: str, registry: RegistrySettings, registry_password: str | None) -> Any:
    """The engine's image `name`, pulled when missing (with the platform registry's login when it is from there)."""
    import docker.errors

    try:
        return client.images.get(name)
    except docker.errors.ImageNotFound:
        pass
    own_registry = name.startswith(f"{registry.url}/") and registry.username and registry_password
    auth = {"username": registry.username, "password": registry_password} if own_registry else None
    log.info("pulling %s", name)
    try:
        return client.images.pull(name, auth_config=auth)
    except docker.errors.APIError as exc:
        raise ImageSourceError(f"image {name} is not in the Docker engine and pulling it failed: "
                               f"{exc.explanation or exc}; check the image name (namespace, arch, tag) and that its "
                               "registry is reachable from the engine") from None


def record_image(spec: RepoSpec, key: str, access: ImageAccess, repo_store: RepoStore) -> images.ImageRef:
    """build_image for an image source: no build, just the image made available (the caller records it). A snapshot
    or inventory cached from an earlier version of the image (a moved tag) is dropped."""
    entry = _entry(spec, key)
    image = _image(spec, entry, access)
    marker = repo_store.snapshot_marker(key)
    recorded = read_json_or(marker)
    if recorded and recorded["image_id"] != image.id:
        log.info("image %s changed since its source was copied out; reading it again", entry.image)
        marker.unlink()
        repo_store.inventory_path(key).unlink(missing_ok=True)
    log.info("repo %s: %s uses image %s (%s), nothing built", spec.name, entry.label, entry.image, image.short_id)
    return images.ImageRef(repo=spec.name, commit=key, kind="docker", workdir=entry.workdir, image=entry.image,
                           digest=_registry_digest(image, entry.image), origin="existing")


def _registry_digest(image: Any, name: str) -> str | None:
    """The digest `name` was pulled by (pins a moving tag such as :latest in the run's record); None if never pulled."""
    from docker.utils import parse_repository_tag

    repository = parse_repository_tag(name)[0]
    return next((entry.partition("@")[2] for entry in image.attrs.get("RepoDigests") or []
                 if entry.partition("@")[0] == repository), None)


def snapshot(spec: RepoSpec, key: str, access: ImageAccess, repo_store: RepoStore) -> repos.RepoSnapshot:
    """The image's workdir, copied out into the snapshot cache once per image id."""
    entry = _entry(spec, key)
    image = _image(spec, entry, access)
    # the marker says which image the snapshot was copied from, and the commit found in it (next to the snapshot,
    # not inside it, so the snapshot is exactly the image's workdir)
    dest, marker = repo_store.snapshot_dir(key), repo_store.snapshot_marker(key)
    recorded = read_json_or(marker)
    if not (recorded and recorded["image_id"] == image.id and dest.is_dir()):
        copy_workdir(image, entry.workdir, dest)
        head = _head(dest, entry)
        atomic_write_json(marker, {"image": entry.image, "image_id": image.id, "workdir": entry.workdir,
                                   "label": entry.label, "head": head})
        log.info("repo %s: copied %s out of %s (commit %s)", spec.name, entry.workdir, entry.image, head[:12])
    return repos.RepoSnapshot(repo=spec.name, commit=key, workdir=str(dest))


def copy_workdir(image: Any, workdir: str, dest: Path) -> None:
    """Copy `workdir` out of a created, never started container of `image` to `dest` (replacing what is there).
    Entries that would land outside `dest` (absolute or escaping links, device files) are skipped and listed."""
    import docker.errors

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
    container = image.client.containers.create(image.id, command=["true"], network_disabled=True)
    try:
        try:
            stream, _ = container.get_archive(workdir)
        except docker.errors.NotFound:
            raise ImageSourceError(f"image {_name(image)} has no {workdir}; check the workdir it is configured "
                                   "with") from None
        with tempfile.TemporaryFile(dir=tmp) as archive:
            for chunk in stream:
                archive.write(chunk)
            archive.seek(0)
            with tarfile.open(fileobj=archive) as tar:
                skipped = repos.extract_tar(tar, tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp / PurePosixPath(workdir).name, dest)
    finally:
        container.remove(force=True)
        shutil.rmtree(tmp, ignore_errors=True)
    if skipped:
        log.warning("image %s: %d entries of %s not copied (links outside it or special files): %s", _name(image),
                    len(skipped), workdir, ", ".join(skipped[:10]))


def _name(image: Any) -> str:
    return (image.tags or [image.short_id])[0]


def _head(workdir: Path, entry: SourceImage) -> str:
    """The commit checked out in the copied workdir, checked against the configured one; leftovers that git would
    count as changes are reported, since they would show up in every rollout's patch."""
    if not (workdir / ".git").exists():
        raise ImageSourceError(f"image {entry.image} has no git repository at {entry.workdir}; rollouts take their "
                               "patches with git diff, so the image needs the repository checked out there")
    head = repos.git("rev-parse", "HEAD", cwd=workdir).decode().strip()
    if entry.commit and not head.startswith(entry.commit):
        raise ImageSourceError(f"image {entry.image} has commit {head} at {entry.workdir}, not the configured "
                               f"{entry.commit}")
    dirty = repos.git("--no-optional-locks", "status", "--porcelain", cwd=workdir).decode().splitlines()
    if dirty:
        log.warning("image %s: %d uncommitted change(s) in %s will appear in every patch: %s", entry.image,
                    len(dirty), entry.workdir, "; ".join(line.strip() for line in dirty[:5]))
    return head
