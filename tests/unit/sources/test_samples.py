"""The bundled sample repository: real git history, identical hashes on every build, a package whose tests pass."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sera_ops.sources import samples
from sera_ops.sources.samples import SAMPLE_REPOS, build_sample_repo, sample_commits

SAMPLE_DATA = Path(samples.__file__).with_name("sample_repos")


def git(repo: Path, *args: str) -> str:
    """Inherited GIT_* variables (a git hook running the tests sets some) would point git at another repository."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout.strip()


def run_package_tests(repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unittest", "discover", "-s", "tests"], cwd=repo, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build_sample_repo("tinyledger", tmp_path_factory.mktemp("sample") / "tinyledger")


def test_history_follows_the_manifest(built):
    commits = sample_commits("tinyledger")
    log = git(built, "log", "--reverse", "--format=%an <%ae>|%cn <%ce>|%aI|%cI", "main").splitlines()
    assert len(log) == len(commits) == 4
    for line, commit in zip(log, commits, strict=True):
        author, committer, authored, committed = line.split("|")
        assert author == committer == "Sample Author <sample@example.invalid>"
        assert authored == committed == commit.date.isoformat()
    hashes = git(built, "rev-list", "--reverse", "HEAD").splitlines()
    messages = [git(built, "log", "-1", "--format=%B", sha) for sha in hashes]
    assert messages == [commit.message for commit in commits]
    assert git(built, "branch", "--show-current") == "main"
    assert git(built, "status", "--porcelain") == ""


def test_each_commit_changes_exactly_its_snapshot(built):
    """Snapshots hold only changed files, so a stored-but-unchanged file is a data mistake this catches."""
    hashes = git(built, "rev-list", "--reverse", "HEAD").splitlines()
    for sha, commit in zip(hashes, sample_commits("tinyledger"), strict=True):
        snapshot = SAMPLE_DATA / "tinyledger" / "commits" / commit.directory
        stored = {
            str(path.relative_to(snapshot)).replace("dot-gitignore", ".gitignore")
            for path in snapshot.rglob("*")
            if path.is_file()
        }
        changed = set(git(built, "diff-tree", "--root", "--no-commit-id", "--name-only", "-r", sha).splitlines())
        assert changed == stored | set(commit.deleted)
        assert not set(commit.deleted) & set(git(built, "ls-tree", "-r", "--name-only", sha).splitlines())
    assert ".gitignore" in git(built, "ls-files").splitlines()


def test_builds_are_deterministic_whatever_the_callers_git_setup(built, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[user]\n\tname = Somebody Else\n[commit]\n\tgpgsign = true\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("GIT_CONFIG_GLOBAL", raising=False)
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2030-01-01T00:00:00+00:00")
    monkeypatch.setenv("TZ", "Pacific/Auckland")
    again = build_sample_repo("tinyledger", tmp_path / "again")
    assert git(again, "rev-list", "HEAD") == git(built, "rev-list", "HEAD")
    assert not (tmp_path / "elsewhere").exists()


def test_rebuild_keeps_a_pristine_repo_and_replaces_a_modified_one(tmp_path):
    dest = build_sample_repo("tinyledger", tmp_path / "tinyledger")
    head = git(dest, "rev-parse", "HEAD")
    inode = dest.stat().st_ino

    assert build_sample_repo("tinyledger", dest) == dest
    assert dest.stat().st_ino == inode

    money = dest / "tinyledger" / "money.py"
    original = money.read_text()
    money.write_text("broken = True\n")
    build_sample_repo("tinyledger", dest)
    assert money.read_text() == original
    assert dest.stat().st_ino != inode

    identity = ["-c", "user.name=x", "-c", "user.email=x@example.invalid", "-c", "commit.gpgsign=false"]
    git(dest, *identity, "commit", "--allow-empty", "-qm", "extra")
    build_sample_repo("tinyledger", dest)
    assert git(dest, "rev-parse", "HEAD") == head
    assert [path.name for path in tmp_path.iterdir()] == ["tinyledger"]


def test_refuses_to_replace_a_directory_it_did_not_build(tmp_path):
    dest = tmp_path / "precious"
    dest.mkdir()
    (dest / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a sample repository"):
        build_sample_repo("tinyledger", dest)
    assert (dest / "notes.txt").read_text() == "keep me"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["precious"]


def test_unknown_name_lists_the_available_samples(tmp_path):
    with pytest.raises(ValueError, match="available: tinyledger"):
        build_sample_repo("nosuchrepo", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert SAMPLE_REPOS == ("tinyledger",)


def test_package_imports_and_its_own_tests_pass(built):
    imported = subprocess.run(
        [sys.executable, "-c", "import tinyledger; print(tinyledger.__version__)"],
        cwd=built,
        capture_output=True,
        text=True,
    )
    assert imported.stdout.strip() == "0.2.0", imported.stderr
    result = run_package_tests(built)
    assert result.returncode == 0, result.stderr
    assert "Ran 19 tests" in result.stderr


def test_every_commit_is_a_working_state(built, tmp_path):
    """Each commit is a pipeline input of its own, so each must import and pass its tests."""
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "--quiet", str(built), str(clone))
    for sha in git(clone, "rev-list", "--reverse", "HEAD").splitlines():
        git(clone, "checkout", "--quiet", sha)
        result = run_package_tests(clone)
        assert result.returncode == 0, (sha, result.stderr)


def test_final_snapshot_has_enough_functions_and_stays_small(built):
    package = built / "tinyledger"
    functions = [
        node
        for path in package.rglob("*.py")
        if len(path.relative_to(package).parts) <= 2
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    assert 30 <= len(functions) <= 50
    stored_bytes = sum(path.stat().st_size for path in SAMPLE_DATA.rglob("*") if path.is_file())
    assert stored_bytes < 40_000
