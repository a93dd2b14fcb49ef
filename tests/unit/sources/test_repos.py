"""Commit selection (SERA's evenly spaced rule) and snapshots of a commit."""
import subprocess
from pathlib import Path

import pytest

from sera_ops.sources.repos import SourceError, evenly_spaced, select_commits, snapshot


@pytest.mark.parametrize(("m", "n", "expected"), [
    (10, 1, [9]), (10, 2, [0, 9]), (10, 3, [0, 4, 9]), (10, 5, [0, 2, 4, 7, 9]), (3, 5, [0, 1, 2]), (0, 3, []),
    (4, 3, [0, 2, 3]),
])
def test_evenly_spaced(m, n, expected):
    commits = [f"c{i}" for i in range(m)]
    assert evenly_spaced(commits, n) == [f"c{i}" for i in expected]


def test_evenly_spaced_tops_up_from_the_newest_when_indices_collide():
    # m=3, n=3 would collide only with rounding; with m=4, n=4 all are taken; m=5, n=4 -> 0, 1, 3, 4
    assert evenly_spaced(list("abcde"), 4) == ["a", "b", "d", "e"]


def _repo(tmp_path: Path, n: int) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1", "PATH": "/usr/bin:/bin"}
    subprocess.run(["git", "-c", "init.defaultBranch=main", "init", "-q"], cwd=repo, check=True, env=env)
    for i in range(n):
        (repo / "f.py").write_text(f"x = {i}\n")
        date = f"2026-01-{i + 1:02d}T00:00:00+00:00"
        subprocess.run(["git", "add", "."], cwd=repo, check=True, env=env)
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", f"c{i}"], cwd=repo,
                       check=True, env=env | {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date})
    return repo


def test_select_commits_from_window_and_explicit(tmp_path):
    repo = _repo(tmp_path, 5)
    log = subprocess.run(["git", "log", "--reverse", "--format=%H"], cwd=repo, capture_output=True, text=True,
                         check=True).stdout.split()
    now = 1767225600 + 10 * 86400  # 2026-01-11
    assert select_commits(repo, [], 2, 365, now=now) == [log[0], log[4]]
    assert select_commits(repo, [], 2, 8, now=now) == [log[2], log[4]]  # window: commits of the last 8 days
    assert select_commits(repo, [log[1][:8], "nope"], 5, 365, now=now) == [log[1], "nope"]
    with pytest.raises(SourceError, match="no commits in the last 1 days.*lookback_days"):
        select_commits(repo, [], 2, 1, now=now + 86400 * 30)


def test_snapshot_is_a_single_commit_repo_and_unknown_commits_are_named(tmp_path):
    repo = _repo(tmp_path, 2)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    snap = snapshot(repo, head, tmp_path / "snap", "demo")
    work = Path(snap.workdir)
    assert (work / "f.py").read_text() == "x = 1\n"
    log = subprocess.run(["git", "log", "--format=%s"], cwd=work, capture_output=True, text=True).stdout
    assert log.strip() == f"sera snapshot of {head}"
    assert subprocess.run(["git", "status", "--porcelain"], cwd=work, capture_output=True, text=True).stdout == ""
    with pytest.raises(SourceError, match="commit 'deadbeef' not found"):
        snapshot(repo, "deadbeef", tmp_path / "snap2", "demo")
