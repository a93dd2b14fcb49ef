"""Exports of held-out tasks for Harbor and swebench: each format's documented layout, no reference patch where the
agent can read it, no git history in the environment, and — what matters — the shipped verifiers scoring a work tree
as the platform's soft verification does (run for real, outside the project, with python3 and git)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from sera_ops import verify
from sera_ops.evaluate import exports
from sera_ops.evaluate.exports import export_harbor, export_swebench, task_dir_name
from sera_ops.records import EvalTask

CORE = """def total(entries):
    return sum(entry.amount for entry in entries)


def balance(entries, account):
    return sum(entry.amount for entry in entries if entry.account == account)
"""
FIXED_TOTAL = CORE.replace("    return sum(entry.amount for entry in entries)\n",
                           "    return round(sum(entry.amount for entry in entries), 2)\n")
MONEY = "def cents(amount):\n    return round(amount * 100)\n"
HARBOR_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]*/[a-zA-Z0-9][a-zA-Z0-9._-]*$")
"""Harbor's `[task] name` pattern (org/name)."""
SAFE_DIR = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false",
                           *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def source(tmp_path) -> dict:
    """A repository with history: the task's commit, then a leaked fix on a branch, a tag and a stash."""
    repo = tmp_path / "tinyledger"
    (repo / "ledger").mkdir(parents=True)
    (repo / "ledger" / "core.py").write_text("def total(entries):\n    return 0\n")
    (repo / ".gitignore").write_text("*.log\n")
    (repo / "kept.log").write_text("tracked although ignored\n")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "--all")
    _git(repo, "add", "-f", "kept.log")
    _git(repo, "commit", "-q", "-m", "first")
    (repo / "ledger" / "core.py").write_text(CORE)
    _git(repo, "commit", "-q", "-am", "the task's commit")
    commit = _git(repo, "rev-parse", "HEAD").strip()
    (repo / "ledger" / "core.py").write_text(FIXED_TOTAL)
    (repo / "ledger" / "money.py").write_text(MONEY)
    _git(repo, "add", "--all")
    reference = _git(repo, "diff", "--cached", "--no-color", "--binary")
    _git(repo, "checkout", "-q", "-b", "fix")
    _git(repo, "commit", "-q", "-m", "the fix")
    leaked = _git(repo, "rev-parse", "HEAD").strip()
    _git(repo, "checkout", "-q", "main")
    _git(repo, "tag", "v-fix", leaked)
    (repo / "ledger" / "core.py").write_text(CORE + "# stashed\n")
    _git(repo, "stash", "-q")
    (repo / ".git" / "info" / "exclude").write_text("ledger.egg-info/\n")
    (repo / "ledger.egg-info").mkdir()
    (repo / "ledger.egg-info" / "PKG-INFO").write_text("Name: ledger\n")
    assert _git(repo, "status", "--porcelain") == ""
    return {"repo": repo, "commit": commit, "reference": reference, "leaked": leaked}


def _task(source: dict, task_id: str = "tinyledger_8b665e4_10000", **changes) -> EvalTask:
    commit = source["commit"]
    image = {"repo": "tinyledger", "commit": commit, "kind": "docker", "workdir": "/testbed",
             "image": f"127.0.0.1:5000/sera/tinyledger:{commit}", "digest": None, "python": "3.11.7",
             "origin": "built"}
    fields = {"task_id": task_id, "repo": "tinyledger", "commit": commit, "image": image,
              "problem_statement": "Totals should be rounded to cents.\n\nAlso add a `cents` helper.",
              "reference_patch": source["reference"], "start_fn": "total", "start_fn_file": "ledger/core.py",
              "run_id": "manual__2026-11-25T07:00:00+00:00", "test_cmd": None}
    return EvalTask(**{**fields, **changes})


def _environment(source: dict, dockerfile: Path, dest: Path) -> Path:
    """The work tree as the exported Dockerfile's RUN leaves it (run here with sh, continuations joined as docker
    joins them), from a copy of the repository with its history."""
    shutil.copytree(source["repo"], dest, symlinks=True)
    text = dockerfile.read_text()
    run = text[text.index("\nRUN ") + len("\nRUN "):].replace("\\\n", "")
    subprocess.run(["sh", "-c", run], cwd=dest, check=True, capture_output=True)
    return dest


def _apply(workdir: Path, change: str, reference: str) -> None:
    if change in ("reference", "committed"):
        subprocess.run(["git", "apply"], input=reference, text=True, cwd=workdir, check=True)
        if change == "committed":
            _git(workdir, "add", "--all")
            _git(workdir, "commit", "-q", "-m", "agent's work")
    elif change == "partial":  # the total's two lines, not the new file's two
        (workdir / "ledger" / "core.py").write_text(FIXED_TOTAL)


def _clean_env(workdir: Path, logs: Path) -> dict[str, str]:
    """The shipped check must run without the project: a `sera_ops` that fails to import comes first on the path
    (whichever python3 the scripts find, even one with the project installed)."""
    poison = logs.parent / "poison" / "sera_ops"
    poison.mkdir(parents=True, exist_ok=True)
    (poison / "__init__.py").write_text("raise ImportError('the exported check imported the project')\n")
    return {**os.environ, "PYTHONPATH": str(poison.parent), exports.WORKDIR_ENV: str(workdir),
            exports.LOGS_ENV: str(logs)}


def _run(script: Path, workdir: Path, logs: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], cwd=logs.parent, env=_clean_env(workdir, logs),
                          capture_output=True, text=True, timeout=60)


EXPECTED = {"reference": (1.0, True), "committed": (1.0, True), "none": (0.0, False), "partial": (0.5, False)}


# --- Harbor --------------------------------------------------------------------------------------------------------


def test_harbor_tasks_follow_the_documented_layout_and_task_toml(source, tmp_path):
    tasks = [_task(source), _task(source, "tinyledger_8b665e4_10001-1", test_cmd="pytest -q")]
    paths = export_harbor(tasks, tmp_path / "harbor", threshold=1.0)

    assert paths == [tmp_path / "harbor" / task_dir_name(task.task_id) for task in tasks]
    assert sorted(p.name for p in (tmp_path / "harbor").iterdir()) == sorted(p.name for p in paths)
    for task, path in zip(tasks, paths, strict=True):
        for required in ("instruction.md", "task.toml", "environment/Dockerfile", "tests/test.sh",
                         "solution/solve.sh"):
            assert (path / required).is_file(), required
        assert os.access(path / "tests" / "test.sh", os.X_OK) and os.access(path / "solution" / "solve.sh", os.X_OK)
        assert (path / "instruction.md").read_text() == task.problem_statement + "\n"

        config = tomllib.loads((path / "task.toml").read_text())
        assert config["schema_version"] == "1.1"
        assert HARBOR_NAME.match(config["task"]["name"]) and isinstance(config["task"]["description"], str)
        assert all(isinstance(author["name"], str) for author in config["task"]["authors"])
        metadata = config["metadata"]
        assert isinstance(metadata["author_name"], str) and metadata["difficulty"] in ("easy", "medium", "hard")
        assert isinstance(metadata["category"], str)
        assert metadata["tags"] and all(isinstance(tag, str) for tag in metadata["tags"])
        assert metadata["sera_task_id"] == task.task_id and metadata["commit"] == task.commit
        assert metadata["threshold"] == 1.0 and metadata.get("test_cmd") == task.test_cmd
        for section in ("verifier", "agent"):
            assert isinstance(config[section]["timeout_sec"], float) and config[section]["timeout_sec"] > 0
        environment = config["environment"]
        assert isinstance(environment["build_timeout_sec"], float)
        assert all(isinstance(environment[key], int) and environment[key] > 0
                   for key in ("cpus", "memory_mb", "storage_mb"))

        dockerfile = (path / "environment" / "Dockerfile").read_text()
        instructions = [line.split()[0] for line in dockerfile.splitlines() if line and line[0] not in "# "]
        assert instructions[:2] == ["FROM", "WORKDIR"]
        assert f"FROM {task.image['image']}\n" in dockerfile and "WORKDIR /testbed\n" in dockerfile
        assert sorted(p.name for p in (path / "environment").iterdir()) == ["Dockerfile"]
        # the reference patch only where Harbor keeps it from the agent
        for visible in ("instruction.md", "task.toml", "environment/Dockerfile"):
            text = (path / visible).read_text()
            assert task.reference_patch not in text and "round(sum(" not in text, visible
        assert (path / "tests" / "reference.patch").read_text() == task.reference_patch
        assert (path / "solution" / "reference.patch").read_text() == task.reference_patch
        # the verifier is verify.py itself, not a re-typed copy
        assert (path / "tests" / "soft_verify.py").read_text() == Path(verify.__file__).read_text()


def test_a_pinned_image_digest_goes_in_the_from_line(source, tmp_path):
    task = _task(source)
    task = _task(source, image={**task.image, "digest": "sha256:" + "a" * 64})
    [path] = export_harbor([task], tmp_path / "harbor", threshold=1.0)
    assert f"FROM {task.image['image']}@sha256:{'a' * 64}\n" in (path / "environment" / "Dockerfile").read_text()


def test_the_environment_keeps_the_files_but_no_history(source, tmp_path):
    [path] = export_harbor([_task(source)], tmp_path / "harbor", threshold=1.0)
    workdir = _environment(source, path / "environment" / "Dockerfile", tmp_path / "testbed")

    assert _git(workdir, "rev-list", "--all").split() == [_git(workdir, "rev-parse", "HEAD").strip()]
    assert _git(workdir, "for-each-ref", "--format=%(refname)").split() in ([], ["refs/heads/master"],
                                                                            ["refs/heads/main"])
    assert _git(workdir, "stash", "list") == "" and _git(workdir, "status", "--porcelain") == ""
    leaked = subprocess.run(["git", "cat-file", "-e", source["leaked"]], cwd=workdir, capture_output=True)
    assert leaked.returncode != 0, "the fix's commit is still in the image"
    tracked = _git(source["repo"], "ls-tree", "-r", "--name-only", source["commit"]).split()
    assert _git(workdir, "ls-files").split() == tracked  # kept.log stays tracked although .gitignore matches it
    assert (workdir / ".git" / "info" / "exclude").read_text() == "ledger.egg-info/\n"
    # the same files give the same commit, whenever the image is built
    again = _environment(source, path / "environment" / "Dockerfile", tmp_path / "testbed-again")
    assert _git(again, "rev-parse", "HEAD") == _git(workdir, "rev-parse", "HEAD")


@pytest.mark.parametrize("change", EXPECTED)
def test_harbor_verifier_scores_the_work_tree_by_soft_verification(source, tmp_path, change):
    [path] = export_harbor([_task(source)], tmp_path / "harbor", threshold=1.0)
    workdir = _environment(source, path / "environment" / "Dockerfile", tmp_path / "testbed")
    _apply(workdir, change, source["reference"])
    logs = tmp_path / "logs" / "verifier"

    result = _run(path / "tests" / "test.sh", workdir, logs)

    assert result.returncode == 0, result.stderr
    recall, resolved = EXPECTED[change]
    assert (logs / "reward.txt").read_text() == ("1\n" if resolved else "0\n")
    details = json.loads((logs / "soft_verification.json").read_text())
    assert details["recall"] == pytest.approx(recall) and details["resolved"] is resolved
    assert details["target_lines"] == 4 and details["task_id"] == "tinyledger_8b665e4_10000"
    produced = (logs / "agent.patch").read_text()
    assert details["recall"] == pytest.approx(verify.line_recall(source["reference"], produced))


def test_harbor_threshold_below_one_accepts_the_partial_patch(source, tmp_path):
    [path] = export_harbor([_task(source)], tmp_path / "harbor", threshold=0.5)
    workdir = _environment(source, path / "environment" / "Dockerfile", tmp_path / "testbed")
    _apply(workdir, "partial", source["reference"])
    logs = tmp_path / "logs" / "verifier"
    assert _run(path / "tests" / "test.sh", workdir, logs).returncode == 0
    assert (logs / "reward.txt").read_text() == "1\n"
    assert json.loads((logs / "soft_verification.json").read_text())["recall"] == pytest.approx(0.5)


def test_harbor_oracle_solves_its_task(source, tmp_path):
    [path] = export_harbor([_task(source)], tmp_path / "harbor", threshold=1.0)
    workdir = _environment(source, path / "environment" / "Dockerfile", tmp_path / "testbed")
    logs = tmp_path / "logs" / "verifier"
    solved = subprocess.run(["bash", str(path / "solution" / "solve.sh")], env=_clean_env(workdir, logs),
                            capture_output=True, text=True)
    assert solved.returncode == 0, solved.stderr
    assert _run(path / "tests" / "test.sh", workdir, logs).returncode == 0
    assert (logs / "reward.txt").read_text() == "1\n"


def test_harbor_verifier_gives_zero_when_the_agent_broke_git(source, tmp_path):
    [path] = export_harbor([_task(source)], tmp_path / "harbor", threshold=1.0)
    workdir = _environment(source, path / "environment" / "Dockerfile", tmp_path / "testbed")
    _apply(workdir, "reference", source["reference"])
    shutil.rmtree(workdir / ".git")
    logs = tmp_path / "logs" / "verifier"
    assert _run(path / "tests" / "test.sh", workdir, logs).returncode == 0
    assert (logs / "reward.txt").read_text() == "0\n"


# --- swebench --------------------------------------------------------------------------------------------------------


def test_swebench_repository_follows_the_documented_layout(source, tmp_path):
    tasks = [_task(source), _task(source, "tinyledger_8b665e4_10001-1", test_cmd="pytest -q")]
    root = export_swebench(tasks, tmp_path / "sweb", threshold=1.0)

    assert root == tmp_path / "sweb"
    manifest = yaml.safe_load((root / "sweb.yaml").read_text())
    assert isinstance(manifest["format_version"], str) and isinstance(manifest["name"], str)
    assert [entry["id"] for entry in manifest["tasks"]] == [task_dir_name(task.task_id) for task in tasks]
    assert sorted(p.name for p in (root / "tasks").iterdir()) == sorted(entry["id"] for entry in manifest["tasks"])
    for task in tasks:
        folder = root / "tasks" / task_dir_name(task.task_id)
        for required in ("task.yaml", "tests.json", "problem_statement.md", "hints.md", "Dockerfile"):
            assert (folder / required).is_file(), required
        assert (folder / "assets").is_dir()
        spec = yaml.safe_load((folder / "task.yaml").read_text())
        for key in ("instance_id", "repo", "base_commit", "environment_setup_commit", "version", "patch", "image"):
            assert isinstance(spec[key], str) and spec[key], key
        assert spec["instance_id"] == task.task_id and spec["base_commit"] == task.commit
        assert (folder / spec["patch"]).read_text() == task.reference_patch
        assert (folder / spec["problem_statement"]).read_text() == task.problem_statement + "\n"
        tests = json.loads((folder / "tests.json").read_text())
        assert tests["FAIL_TO_PASS"] == ["soft_verification"] and tests["PASS_TO_PASS"] == []
        assert tests["grading"]["threshold"] == 1.0 and tests["test_cmd"] == task.test_cmd
        assert (folder / "assets" / "soft_verify.py").read_text() == Path(verify.__file__).read_text()
        dockerfile = (folder / "Dockerfile").read_text()
        assert f"FROM {task.image['image']}\n" in dockerfile
        for visible in ("problem_statement.md", "hints.md", "Dockerfile"):
            text = (folder / visible).read_text()
            assert task.reference_patch not in text and "round(sum(" not in text, visible


@pytest.mark.parametrize("change", EXPECTED)
def test_swebench_eval_script_grades_the_work_tree(source, tmp_path, change):
    root = export_swebench([_task(source)], tmp_path / "sweb", threshold=1.0)
    folder = root / "tasks" / task_dir_name("tinyledger_8b665e4_10000")
    workdir = _environment(source, folder / "Dockerfile", tmp_path / "testbed")
    _apply(workdir, change, source["reference"])

    result = _run(folder / "assets" / "eval.sh", workdir, tmp_path / "out" / "verifier")

    assert result.returncode == 0, result.stderr
    recall, resolved = EXPECTED[change]
    lines = result.stdout.splitlines()
    assert ("PASSED soft_verification" if resolved else "FAILED soft_verification") in lines
    assert json.loads(lines[-2])["recall"] == pytest.approx(recall)


def test_swebench_eval_script_grades_a_patch_file(source, tmp_path):
    root = export_swebench([_task(source)], tmp_path / "sweb", threshold=0.5)
    folder = root / "tasks" / task_dir_name("tinyledger_8b665e4_10000")
    partial = "".join(section for section in re.split(r"(?m)^(?=diff --git )", source["reference"])
                      if "ledger/core.py" in section)
    (tmp_path / "partial.patch").write_text(partial)
    result = _run(folder / "assets" / "eval.sh", tmp_path / "nowhere", tmp_path / "out" / "v",
                  str(tmp_path / "partial.patch"))
    assert result.returncode == 0, result.stderr
    assert "PASSED soft_verification" in result.stdout.splitlines()
    assert json.loads(result.stdout.splitlines()[-2])["recall"] == pytest.approx(0.5)


# --- both ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["harbor", "swebench"])
def test_reexport_replaces_tasks_and_leaves_no_stale_ones(source, tmp_path, fmt):
    out = tmp_path / fmt
    first, second = _task(source, "tinyledger_8b665e4_10000"), _task(source, "tinyledger_8b665e4_10001")
    container = out if fmt == "harbor" else out / "tasks"

    def export(tasks):
        (export_harbor if fmt == "harbor" else export_swebench)(tasks, out, threshold=1.0)

    export([first, second])
    (out / ".git").mkdir()
    (out / "README.md").write_text("ours\n")
    export([_task(source, "tinyledger_8b665e4_10001", problem_statement="Reworded.")])

    assert sorted(p.name for p in container.iterdir() if not p.name.startswith(".") and p.is_dir()) == \
        [task_dir_name(second.task_id)]
    statement = "instruction.md" if fmt == "harbor" else "problem_statement.md"
    assert (container / task_dir_name(second.task_id) / statement).read_text() == "Reworded.\n"
    assert (out / ".git").is_dir() and (out / "README.md").read_text() == "ours\n"
    assert not [p for p in out.rglob(".sera-staging-*")] and not list(out.rglob("*.tmp"))
    if fmt == "swebench":
        assert [t["instance_id"] for t in yaml.safe_load((out / "sweb.yaml").read_text())["tasks"]] == \
            [second.task_id]


def test_directory_names_are_safe_stable_and_unique():
    ids = ["TinyLedger_8b665e4_10000-1", "tinyledger_8b665e4_10000-1", "tinyledger-8b665e4-10000-1",
           "a/b c..d", "../../etc", "x" * 300, "ü"]
    names = [task_dir_name(task_id) for task_id in ids]
    assert len(set(names)) == len(ids)
    assert all(SAFE_DIR.match(name) and len(name) <= 80 for name in names), names
    assert task_dir_name(ids[0]) == names[0]
    assert names[0].startswith("tinyledger-8b665e4-10000-1-")


def test_bad_task_lists_are_refused_before_anything_is_written(source, tmp_path):
    task = _task(source)
    local = _task(source, "tinyledger_8b665e4_10001", image={**task.image, "kind": "local", "image": None})
    with pytest.raises(ValueError, match="no container image"):
        export_harbor([task, local], tmp_path / "a", threshold=1.0)
    with pytest.raises(ValueError, match="twice"):
        export_swebench([task, task], tmp_path / "b", threshold=1.0)
    with pytest.raises(ValueError, match="threshold"):
        export_harbor([task], tmp_path / "c", threshold=1.5)
    with pytest.raises(ValueError, match="changes no line"):
        export_harbor([_task(source, reference_patch="")], tmp_path / "d", threshold=1.0)
    assert not any((tmp_path / name).exists() for name in "abcd")
