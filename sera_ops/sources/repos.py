"""Where a repository's code comes from, which commits to use, and a clean snapshot per commit.

Sources are only read (`git log`, `git archive`), never checked out in place, so a user's working copy is safe and
runs for different commits can share one clone. Each selected commit becomes a *snapshot*: the commit's tree as a
fresh single-commit git repository, the same thing the agent sees in `/testbed` (SWE-smith mirrors look alike).
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0"}
SNAPSHOT_IDENTITY = ("-c", "user.name=sera", "-c", "user.email=sera@localhost", "-c", "commit.gpgsign=false",
                     "-c", "init.defaultBranch=main")


class SourceError(RuntimeError):
    """The repository or a commit cannot be read; the message says which and what to check."""


@dataclass(frozen=True)
class RepoSnapshot:
    """One commit of one repository, checked out as a single-commit git repo at `workdir`."""

    repo: str
    commit: str
    workdir: str


def git(*args: str, cwd: Path, input_bytes: bytes | None = None) -> bytes:
    result = subprocess.run(["git", *args], cwd=cwd, input=input_bytes, capture_output=True,
                            env=os.environ | GIT_ENV)
    if result.returncode != 0:
        raise SourceError(f"git {' '.join(args)} failed in {cwd}: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def materialize(source: str, sources_dir: Path) -> Path:
    """A local git directory holding the source: bundled samples are built, URLs cloned (bare) or fetched."""
    if source.startswith("bundled:"):
        from sera_ops.sources.samples import build_sample_repo

        name = source.removeprefix("bundled:")
        return build_sample_repo(name, sources_dir / name)
    path = Path(source)
    if path.is_absolute():
        if not (path / ".git").exists() and not (path / "HEAD").exists():
            raise SourceError(f"source {source} is not a git repository; set 'source' to a git checkout, a git URL "
                              "or bundled:<sample>")
        return path
    target = sources_dir / "clone.git"
    if target.exists():
        git("fetch", "--quiet", "--prune", "origin", "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*",
            cwd=target)
        return target
    sources_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=sources_dir, prefix=".clone-"))
    try:
        git("clone", "--bare", "--quiet", source, str(tmp / "clone.git"), cwd=sources_dir)
        os.replace(tmp / "clone.git", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def commits_in_window(repo_path: Path, lookback_days: int, now: float | None = None) -> list[str]:
    """Commits reachable from HEAD committed in the last `lookback_days`, oldest first."""
    since = int((now if now is not None else time.time()) - lookback_days * 86400)
    out = git("log", "--reverse", "--format=%H", f"--since={since}", "HEAD", cwd=repo_path).decode()
    return out.split()


def evenly_spaced(commits: list[str], n: int) -> list[str]:
    """SERA's pick of n commits from a window: both ends, evenly spaced ones between, topped up from the newest."""
    m = len(commits)
    if n <= 0 or m == 0:
        return []
    if n == 1:
        return [commits[-1]]
    if n >= m:
        return list(commits)
    picked: list[int] = []
    for i in range(n):
        index = round(i * (m - 1) / (n - 1))
        if index not in picked:
            picked.append(index)
    candidate = m - 1
    while len(picked) < n and candidate > 0:
        if candidate not in picked:
            picked.append(candidate)
        candidate -= 1
    return [commits[i] for i in sorted(picked)]


def resolve_commit(repo_path: Path, ref: str) -> str | None:
    result = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=repo_path,
                            capture_output=True, text=True, env=os.environ | GIT_ENV)
    return result.stdout.strip() if result.returncode == 0 else None


def select_commits(repo_path: Path, commits: list[str], n_commits: int, lookback_days: int,
                   now: float | None = None) -> list[str]:
    """Explicit commits win (resolved to full hashes; unknown ones are kept as given so that only their own mapped
    task fails, with a clear error). Otherwise SERA's evenly spaced pick from the lookback window."""
    if commits:
        return [resolve_commit(repo_path, ref) or ref for ref in commits]
    window = commits_in_window(repo_path, lookback_days, now)
    if not window:
        raise SourceError(f"no commits in the last {lookback_days} days on HEAD of {repo_path}; list 'commits' "
                          "explicitly or raise 'lookback_days' in the repository config")
    return evenly_spaced(window, n_commits)


def extract_tar(tar: tarfile.TarFile, dest: Path) -> list[str]:
    """Extract `tar` into `dest` under the rules of tarfile's 'data' filter, skipping (and returning the names of)
    entries that would land outside `dest`: absolute or `..` paths, links that leave it, device files. Python
    >= 3.11.4 applies the filter itself; older 3.11 releases (Debian 12's 3.11.2, the platform image's Python) lack
    it, so the same checks are made here and set-id bits are dropped."""
    skipped: list[str] = []
    if hasattr(tarfile, "data_filter"):
        def keep(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
            try:
                return tarfile.data_filter(member, path)
            except tarfile.FilterError:
                skipped.append(member.name)
                return None

        tar.extractall(dest, filter=keep)
        return skipped
    root = os.path.realpath(dest)

    def inside(path: str) -> bool:
        return os.path.commonpath([root, os.path.realpath(path)]) == root

    members = []
    for member in tar.getmembers():
        target = os.path.join(root, member.name)
        link = (os.path.join(os.path.dirname(target), member.linkname) if member.issym()
                else os.path.join(root, member.linkname) if member.islnk() else target)
        if (os.path.isabs(member.name) or (member.issym() and os.path.isabs(member.linkname)) or member.isdev()
                or not inside(target) or not inside(link)):
            skipped.append(member.name)
            continue
        member.mode &= 0o777
        members.append(member)
    tar.extractall(dest, members=members)
    return skipped


def snapshot(repo_path: Path, commit: str, dest: Path, repo: str) -> RepoSnapshot:
    """The commit's tree as a fresh one-commit repository at `dest` (cached: reused when already there)."""
    if (dest / ".git").exists():
        return RepoSnapshot(repo=repo, commit=commit, workdir=str(dest))
    if resolve_commit(repo_path, commit) != commit:
        raise SourceError(f"commit '{commit}' not found in {repo_path}; check the 'commits' setting or DAG param "
                          "(full or abbreviated hashes, branches and tags are accepted)")
    archive = git("archive", "--format=tar", commit, cwd=repo_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            skipped = extract_tar(tar, tmp)
        if skipped:
            log.warning("commit %s: %d entries not extracted (links outside the tree or special files): %s",
                        commit[:12], len(skipped), ", ".join(skipped[:10]))
        git(*SNAPSHOT_IDENTITY, "init", "--quiet", cwd=tmp)
        git("add", "--all", cwd=tmp)
        git(*SNAPSHOT_IDENTITY, "commit", "--quiet", "--allow-empty", "-m", f"sera snapshot of {commit}", cwd=tmp)
        # One pack instead of a file per object: every copy into an image or a sandbox moves far fewer files.
        git("repack", "-a", "-d", "-q", cwd=tmp)
        git("prune-packed", "-q", cwd=tmp)
        os.replace(tmp, dest)
    except FileExistsError:  # another task finished the same snapshot first; theirs is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return RepoSnapshot(repo=repo, commit=commit, workdir=str(dest))
