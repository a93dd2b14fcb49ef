"""Bundled sample repositories (`source: bundled:<name>`), rebuilt as real git repositories with a fixed history.

A nested ``.git`` cannot ship inside this package, so each sample is stored as per-commit snapshots (the files added or
changed at that commit) plus a ``history.json`` manifest. A fixed author, committer and date per commit make every
build produce the same commit hashes, so demo runs and caches keyed by commit agree across machines and rebuilds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

SAMPLE_REPOS: tuple[str, ...] = ("tinyledger",)

_DATA_DIR = Path(__file__).with_name("sample_repos")
_AUTHOR_NAME = "Sample Author"
_AUTHOR_EMAIL = "sample@example.invalid"
# Packaging drops dotfiles from package data, so a snapshot stores `.gitignore` as `dot-gitignore`.
_DOTFILE_PREFIX = "dot-"
# Written inside `.git` (untracked, hash-neutral): only a directory carrying it may be replaced by a rebuild.
_BUILD_MARKER = "sera-sample-repo"


class GitError(RuntimeError):
    """A git command failed while building or inspecting a sample repository; carries git's own message."""


@dataclass(frozen=True)
class SampleCommit:
    """One manifest entry: the snapshot directory applied on top of the previous commit."""

    directory: str
    message: str
    date: datetime
    deleted: tuple[str, ...]


def sample_commits(name: str) -> tuple[SampleCommit, ...]:
    """The manifest of sample `name`, oldest commit first."""
    manifest = json.loads((_sample_dir(name) / "history.json").read_text(encoding="utf-8"))
    commits = tuple(
        SampleCommit(item["directory"], item["message"], datetime.fromisoformat(item["date"]), tuple(item["deleted"]))
        for item in manifest
    )
    naive = [commit.directory for commit in commits if commit.date.utcoffset() is None]
    if naive:
        # A date without offset would be read in the builder's local time zone and change the hashes.
        raise ValueError(f"sample {name!r}: commit dates need a UTC offset: {', '.join(naive)}")
    return commits


def build_sample_repo(name: str, dest: Path) -> Path:
    """Make `dest` a git repository holding sample `name` with its fixed history; returns `dest`.

    An existing build with the expected HEAD and a clean working tree is kept as is. A stale or modified build is
    replaced; any other existing path is refused (FileExistsError) rather than deleted. The new repository is built
    next to `dest` and renamed into place, so `dest` is never a half-built repository.
    """
    commits = sample_commits(name)
    dest = Path(dest).absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".building", dir=dest.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the repository from containers running as another user
    try:
        _write_history(name, commits, staging)
        if not _is_pristine_build(dest, _git(staging, "rev-parse", "HEAD")):
            _move_into_place(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _sample_dir(name: str) -> Path:
    if name not in SAMPLE_REPOS:
        raise ValueError(f"unknown sample repository {name!r}; available: {', '.join(SAMPLE_REPOS)}")
    return _DATA_DIR / name


def _write_history(name: str, commits: tuple[SampleCommit, ...], repo: Path) -> None:
    _git(repo, "init", "--quiet")
    (repo / ".git" / _BUILD_MARKER).write_text(f"{name}\n", encoding="utf-8")
    for commit in commits:
        for deleted in commit.deleted:
            (repo / deleted).unlink()
        _copy_snapshot(_sample_dir(name) / "commits" / commit.directory, repo)
        _git(repo, "add", "--all")
        # Git's raw date format (epoch and offset) leaves nothing to its date parser or the local time zone.
        stamp = f"{int(commit.date.timestamp())} {commit.date.strftime('%z')}"
        _git(repo, "commit", "--quiet", "--message", commit.message, dates=stamp)


def _copy_snapshot(snapshot: Path, repo: Path) -> None:
    if not snapshot.is_dir():
        raise ValueError(f"sample snapshot {snapshot} is missing")
    for source in sorted(path for path in snapshot.rglob("*") if path.is_file()):
        parts = [_repo_name(part) for part in source.relative_to(snapshot).parts]
        target = repo.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Bytes, not a copy with metadata: the file mode in the commit must not depend on how the package was installed.
        target.write_bytes(source.read_bytes())


def _repo_name(stored_name: str) -> str:
    if stored_name.startswith(_DOTFILE_PREFIX):
        return "." + stored_name.removeprefix(_DOTFILE_PREFIX)
    return stored_name


def _is_pristine_build(dest: Path, expected_head: str) -> bool:
    if not _is_our_build(dest):
        return False
    try:
        head = _git(dest, "rev-parse", "HEAD")
        dirty = _git(dest, "status", "--porcelain")
    except GitError:
        return False
    return head == expected_head and not dirty


def _is_our_build(path: Path) -> bool:
    return (path / ".git" / _BUILD_MARKER).is_file()


def _move_into_place(staging: Path, dest: Path) -> None:
    if not (dest.exists() or dest.is_symlink()):
        staging.rename(dest)
        return
    if not _is_our_build(dest):
        raise FileExistsError(f"{dest} exists and is not a sample repository built here; remove it or choose another")
    retired = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.old")
    dest.rename(retired)
    staging.rename(dest)
    shutil.rmtree(retired, ignore_errors=True)


def _git(repo: Path, *args: str, dates: str | None = None) -> str:
    """Run git with no user or system configuration and no inherited GIT_* variables, so the result is reproducible."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    env |= {
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": _AUTHOR_NAME,
        "GIT_AUTHOR_EMAIL": _AUTHOR_EMAIL,
        "GIT_COMMITTER_NAME": _AUTHOR_NAME,
        "GIT_COMMITTER_EMAIL": _AUTHOR_EMAIL,
    }
    if dates is not None:
        env |= {"GIT_AUTHOR_DATE": dates, "GIT_COMMITTER_DATE": dates}
    options = ["-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false", "-c", "core.autocrlf=false"]
    completed = subprocess.run(["git", *options, *args], cwd=repo, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        raise GitError(f"git {' '.join(args[:1])} failed in {repo}: {completed.stderr.strip()}")
    return completed.stdout.strip()
