"""Held-out evaluation tasks for other harnesses: Harbor task directories and a swebench 5 task repository.

Both formats carry the same three things:

- the problem statement (the synthetic PR) and nothing else as what the agent reads;
- an environment built `FROM` the commit's image with its git history squashed into one fresh commit: agents have been
  seen reading fixes out of `.git` in evaluation images (SWE-bench images hold the project's whole history), so no
  commit, ref, reflog, stash or remote survives;
- a verifier that scores the agent's work as the platform does: SERA's soft verification, the changed-line recall of
  the reference patch in the agent's `git diff` against the task's commit, resolved at `threshold`. It is
  `sera_ops/verify.py` itself, shipped verbatim as `soft_verify.py` beside a small driver (`check.py`), so that a
  harness outside the platform cannot drift from it; the image needs only git and python3.

The reference patch is written only where a harness keeps it from the agent: Harbor's `tests/` (uploaded after the
agent finished) and `solution/` (its oracle); swebench's `assets/`, which `task.yaml`'s `patch` points to.

Formats. Harbor's files follow its documented task format: `instruction.md`, `task.toml` (schema 1.1: `[task]`,
`[metadata]`, `[verifier]`, `[agent]`, `[environment]`; the older `version` key is Harbor's deprecated spelling of
`schema_version`), `environment/Dockerfile`, `tests/test.sh` writing `/logs/verifier/reward.txt`, `solution/solve.sh`.
swebench 5 documents its task repository layout (`sweb.yaml`, then `tasks/<id>/{task.yaml, tests.json,
problem_statement.md, hints.md, Dockerfile, assets/}`) but, as far as we could find, not the fields of those files:
the fields written here are modelled on the SWE-bench instance schema (instance_id, repo, base_commit, patch,
test_patch, FAIL_TO_PASS, PASS_TO_PASS, environment_setup_commit, version) and should be checked with
`swebench dataset check` before a push. Its verifier prints `PASSED soft_verification` or `FAILED
soft_verification`, the line SWE-bench's pytest log parser reads, for the one FAIL_TO_PASS test.

Re-exporting into the same directory replaces: each task is staged whole beside its place and swapped in, and task
directories that the new export does not have are removed, whoever wrote them; other entries (a `.git`, a README) are
left alone. Every file is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from sera_ops import verify
from sera_ops.build.images import ImageRef
from sera_ops.records import EvalTask
from sera_ops.rollouts.sandbox import PATCH_COMMAND
from sera_ops.store.io import atomic_write_text

HARBOR_SCHEMA_VERSION = "1.1"
SWEBENCH_FORMAT_VERSION = "5.0"
HARBOR_ORG = "sera"
"""The org of Harbor's `[task] name` (`org/name`)."""
AUTHOR = "SERA platform"
AGENT_TIMEOUT_S = 3600.0
VERIFIER_TIMEOUT_S = 300.0
BUILD_TIMEOUT_S = 900.0
CPUS, MEMORY_MB, STORAGE_MB = 2, 4096, 10240
TEST_NAME = "soft_verification"
"""The one test of a swebench task: FAIL_TO_PASS before the fix, PASSED once the recall reaches the threshold."""

CHECK_SCRIPT, VERIFY_MODULE, REFERENCE_PATCH = "check.py", "soft_verify.py", "reference.patch"
HARBOR_TESTS, HARBOR_SOLUTION, HARBOR_ENVIRONMENT = "tests", "solution", "environment"
SWEBENCH_TASKS, SWEBENCH_ASSETS, SWEBENCH_EVAL = "tasks", "assets", "eval.sh"
HARBOR_LOGS = "/logs/verifier"
"""Where Harbor collects the verifier's files; `reward.txt` holds the reward."""
WORKDIR_ENV, LOGS_ENV = "SERA_TASK_WORKDIR", "SERA_VERIFIER_LOGS"
"""Overrides of the work tree and the output folder of the verifier scripts (for running them outside the image)."""

_STAGING_PREFIX = ".sera-staging-"
_MAX_SLUG = 64
_COMMIT_DATE = "2000-01-01T00:00:00+0000"
"""The squashed commit's date: fixed, so that the same files give the same commit."""
_IMAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")
_WORKDIR = re.compile(r"^/[A-Za-z0-9._/-]*$")

_CHECK_PY = '''"""Soft verification of an agent's patch: the changed-line recall of the task's reference patch.

Written by sera_ops.evaluate.exports beside soft_verify.py, a verbatim copy of sera_ops/verify.py, so that a harness
outside the platform scores exactly as the platform does. Standard library only. Exit status: 0 resolved, 1 not
resolved, 2 the check itself failed.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from soft_verify import changed_lines, is_resolved, line_recall  # noqa: E402


def _read(path):
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read()


def _write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description="SERA soft verification of a patch against a reference patch")
    parser.add_argument("--reference", required=True, help="the task's reference patch")
    parser.add_argument("--patch", required=True, help="the agent's patch (git diff against the task's commit)")
    parser.add_argument("--threshold", type=float, required=True, help="recall needed to count as resolved")
    parser.add_argument("--task-id", default="")
    parser.add_argument("--test-name", default="TEST_NAME")
    parser.add_argument("--reward", help="file for the reward: 1 when resolved, else 0")
    parser.add_argument("--details", help="file for the verdict as JSON")
    args = parser.parse_args(argv)
    reference, produced = _read(args.reference), _read(args.patch)
    resolved = is_resolved(reference, produced, args.threshold)
    verdict = {"task_id": args.task_id, "recall": line_recall(reference, produced), "threshold": args.threshold,
               "resolved": resolved, "target_lines": len(changed_lines(reference)),
               "produced_lines": len(changed_lines(produced))}
    line = json.dumps(verdict, sort_keys=True)
    if args.details:
        _write(args.details, line + "\\n")
    if args.reward:
        _write(args.reward, "1\\n" if resolved else "0\\n")
    print(line)
    print(("PASSED " if resolved else "FAILED ") + args.test_name)
    return 0 if resolved else 1


if __name__ == "__main__":
    sys.exit(main())
'''.replace("TEST_NAME", TEST_NAME)

_SCORE_SH = """#!/usr/bin/env bash
# {title}
# Scores the agent's changes to the work tree (or, given a file, that patch) by SERA's soft verification:
# changed-line recall of {reference} at threshold {threshold}. Output in ${logs_env} (default {logs_default}):
# reward.txt (1 resolved, 0 not), agent.patch and {details}.
set -u
here="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
workdir="${{{workdir_env}:-{workdir}}}"
out="${{{logs_env}:-{logs_default}}}"
python="$(command -v python3 || command -v python)" || {{ echo "no python3 in the image" >&2; exit 2; }}
mkdir -p "$out"
# The agent may run as another user than the verifier: git must still read the work tree.
export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0='*'
if [ "$#" -gt 0 ]; then
  cp "$1" "$out/agent.patch" || exit 2
# Against the task's commit (the root of the one-commit history), so committed work counts as well.
elif ! (cd "$workdir" && base="$(git rev-list --max-parents=0 HEAD | tail -n 1)" && [ -n "$base" ] \\
        && {patch_command} "$base") > "$out/agent.patch"; then
  echo "cannot read the changes in $workdir with git: scoring an empty patch" >&2
  : > "$out/agent.patch"
fi
"$python" "$here/{check}" --task-id {task_id} --threshold {threshold} --reference "$here/{reference}" \\
  --patch "$out/agent.patch" --reward "$out/reward.txt" --details "$out/{details}"
status=$?
if [ "$status" -gt 1 ]; then
  rm -f "$out/reward.txt"  # the check failed, not the agent: no reward rather than a wrong one
  exit "$status"
fi
exit 0
"""

_SOLVE_SH = """#!/usr/bin/env bash
# Harbor's oracle for {task_id}: apply the reference patch to the work tree.
set -eu
here="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
cd "${{{workdir_env}:-{workdir}}}"
export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0='*'
git apply --whitespace=nowarn "$here/{reference}"
"""


def task_dir_name(task_id: str) -> str:
    """A portable, lower-case directory (and Harbor task) name for a task id, unique per id: instance ids like
    `TinyLedger_8b665e4_10000-1` become `tinyledger-8b665e4-10000-1-<8 hex of the id>` (lower-casing alone could make
    two ids one)."""
    slug = re.sub(r"[^a-z0-9]+", "-", task_id.lower()).strip("-")[:_MAX_SLUG].rstrip("-") or "task"
    return f"{slug}-{hashlib.sha256(task_id.encode()).hexdigest()[:8]}"


def export_harbor(tasks: list[EvalTask], out_dir: Path, *, threshold: float) -> list[Path]:
    """One Harbor task directory per task under `out_dir` (a Harbor dataset folder); their paths, in task order."""
    names = _checked(tasks, threshold)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _staging(out_dir) as staging:
        for task, name in zip(tasks, names, strict=True):
            _write_harbor_task(staging / name, task, name, threshold)
        _swap_in(staging, out_dir, names, is_task=lambda path: (path / "task.toml").is_file())
    return [out_dir / name for name in names]


def export_swebench(tasks: list[EvalTask], out_dir: Path, *, threshold: float) -> Path:
    """A swebench 5 task repository at `out_dir`: `sweb.yaml` and one `tasks/<name>/` per task; returns `out_dir`."""
    names = _checked(tasks, threshold)
    out_dir = Path(out_dir)
    task_root = out_dir / SWEBENCH_TASKS
    task_root.mkdir(parents=True, exist_ok=True)
    with _staging(out_dir) as staging:  # beside tasks/, where a harness would take a leftover for a task
        for task, name in zip(tasks, names, strict=True):
            _write_swebench_task(staging / name, task, threshold)
        _swap_in(staging, task_root, names, is_task=Path.is_dir)
    manifest = {
        "format": "swebench-task-repository",
        "format_version": SWEBENCH_FORMAT_VERSION,
        "name": "-".join(["sera-eval", *sorted({_slug(task.repo) for task in tasks})]),
        "description": "SERA held-out evaluation tasks (synthetic PRs over the repositories' own commits), graded by "
                       "soft verification: changed-line recall of the reference patch.",
        "generated_by": "sera_ops.evaluate.exports",
        "grading": {"kind": "soft_verification", "threshold": threshold, "test": TEST_NAME,
                    "log_parser": "pytest"},
        "tasks_dir": SWEBENCH_TASKS,
        "tasks": [{"id": name, "instance_id": task.task_id, "repo": task.repo}
                  for task, name in zip(tasks, names, strict=True)],
    }
    _write(out_dir / "sweb.yaml", _yaml(manifest))
    return out_dir


# --- the two layouts -----------------------------------------------------------------------------------------------


def _write_harbor_task(task_dir: Path, task: EvalTask, name: str, threshold: float) -> None:
    ref = _image(task)
    _write(task_dir / "instruction.md", _statement(task))
    _write(task_dir / "task.toml", _toml(_harbor_config(task, name, threshold, ref)))
    _write(task_dir / HARBOR_ENVIRONMENT / "Dockerfile", dockerfile(task))
    tests = task_dir / HARBOR_TESTS
    _write_verifier(tests, task)
    _write(tests / "test.sh", _score_script(task, threshold, ref, title=f"Harbor verifier of {task.task_id}.",
                                            logs_default=HARBOR_LOGS), executable=True)
    solution = task_dir / HARBOR_SOLUTION
    _write(solution / REFERENCE_PATCH, task.reference_patch)
    _write(solution / "solve.sh", _SOLVE_SH.format(task_id=task.task_id, workdir_env=WORKDIR_ENV,
                                                   workdir=ref.workdir, reference=REFERENCE_PATCH), executable=True)


def _harbor_config(task: EvalTask, name: str, threshold: float, ref: ImageRef) -> dict[str, Any]:
    """task.toml as a dict. `[metadata]` is free-form in Harbor: the documented keys plus the task's provenance."""
    tags = ["sera", "soft-verification", _slug(task.repo)]
    metadata: dict[str, Any] = {
        "author_name": AUTHOR, "difficulty": _difficulty(task), "category": "software-engineering", "tags": tags,
        "sera_task_id": task.task_id, "repo": task.repo, "commit": task.commit, "image": ref.image,
        "workdir": ref.workdir, "start_fn": task.start_fn, "start_fn_file": task.start_fn_file, "run_id": task.run_id,
        "threshold": threshold, "reference_lines": len(verify.changed_lines(task.reference_patch)),
    }
    if ref.python:
        metadata["python"] = ref.python
    if task.test_cmd:
        metadata["test_cmd"] = task.test_cmd
    return {
        "schema_version": HARBOR_SCHEMA_VERSION,
        "task": {"name": f"{HARBOR_ORG}/{name}",
                 "description": f"SERA held-out task {task.task_id}: {task.repo} at {task.commit[:12]}",
                 "authors": [{"name": AUTHOR}], "keywords": tags},
        "metadata": metadata,
        "verifier": {"timeout_sec": VERIFIER_TIMEOUT_S},
        "agent": {"timeout_sec": AGENT_TIMEOUT_S},
        "environment": {"build_timeout_sec": BUILD_TIMEOUT_S, "cpus": CPUS, "memory_mb": MEMORY_MB,
                        "storage_mb": STORAGE_MB},
    }


def _write_swebench_task(task_dir: Path, task: EvalTask, threshold: float) -> None:
    ref = _image(task)
    assets = task_dir / SWEBENCH_ASSETS
    _write_verifier(assets, task)
    _write(assets / SWEBENCH_EVAL, _score_script(task, threshold, ref, title=f"swebench grading of {task.task_id}.",
                                                 logs_default="/tmp/sera-verifier"), executable=True)
    _write(task_dir / "problem_statement.md", _statement(task))
    _write(task_dir / "hints.md", "")
    _write(task_dir / "Dockerfile", dockerfile(task))
    eval_cmd = f"bash {SWEBENCH_ASSETS}/{SWEBENCH_EVAL}"
    _write(task_dir / "task.yaml", _yaml({
        "instance_id": task.task_id,
        "repo": task.repo,
        "base_commit": task.commit,
        "environment_setup_commit": task.commit,
        "version": task.commit[:12],
        "problem_statement": "problem_statement.md",
        "hints": "hints.md",
        "dockerfile": "Dockerfile",
        "image": ref.image,
        "workdir": ref.workdir,
        "language": "python",
        "patch": f"{SWEBENCH_ASSETS}/{REFERENCE_PATCH}",
        "test_patch": None,
        "metadata": {"source": "sera", "run_id": task.run_id, "start_fn": task.start_fn,
                     "start_fn_file": task.start_fn_file, "python": ref.python},
    }))
    _write(task_dir / "tests.json", json.dumps({
        "FAIL_TO_PASS": [TEST_NAME],
        "PASS_TO_PASS": [],
        "eval_cmd": eval_cmd,
        "log_parser": "pytest",
        "grading": {"kind": "soft_verification", "threshold": threshold,
                    "reference_lines": len(verify.changed_lines(task.reference_patch)),
                    "script": f"{SWEBENCH_ASSETS}/{CHECK_SCRIPT}"},
        "test_cmd": task.test_cmd,
    }, indent=2) + "\n")


# --- what both formats share ---------------------------------------------------------------------------------------


def dockerfile(task: EvalTask) -> str:
    """The task's environment: its commit image, with the work tree's git history squashed into one new commit."""
    ref = _image(task)
    base = f"{ref.image}@{ref.digest}" if ref.digest and ref.digest.startswith("sha256:") else ref.image
    steps = " \\\n    ".join(squash_history_script(task.commit))
    return (f"# SERA held-out task {task.task_id}: {task.repo} at {task.commit}.\n"
            "# No git history past the task's commit: the work tree becomes a fresh one-commit repository.\n"
            f"FROM {base}\nWORKDIR {ref.workdir}\nRUN {steps}\n")


def squash_history_script(commit: str) -> list[str]:
    """Shell commands, run in the work tree, that replace its `.git` with a fresh repository holding one commit of the
    same files: tracked files are kept even where a .gitignore matches them, and `.git/info/exclude` (where image
    builds hide their install leftovers) is carried over, so the agent's `git diff` shows only its own changes."""
    message = shlex.quote(f"sera evaluation task at {commit}")
    return [
        "set -eu;",
        "export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0='*';",
        "tracked=/tmp/.sera-tracked; exclude=/tmp/.sera-exclude; : > \"$tracked\"; rm -f \"$exclude\";",
        "if [ -d .git ]; then git ls-files -z > \"$tracked\" || :; fi;",
        "if [ -f .git/info/exclude ]; then cp .git/info/exclude \"$exclude\"; fi;",
        "rm -rf .git;",
        "git init -q;",
        "if [ -f \"$exclude\" ]; then mkdir -p .git/info; cp \"$exclude\" .git/info/exclude; fi;",
        "git add --all;",
        "xargs -0 -r sh -c 'for f do if [ -e \"$f\" ] || [ -L \"$f\" ]; then printf \"%s\\0\" \"$f\"; fi; done' sh"
        " < \"$tracked\" | xargs -0 -r git add -f --;",
        f"GIT_AUTHOR_DATE={_COMMIT_DATE} GIT_COMMITTER_DATE={_COMMIT_DATE} git -c user.name=sera"
        f" -c user.email=sera@localhost -c commit.gpgsign=false commit -q --allow-empty --no-verify -m {message};",
        "rm -f \"$tracked\" \"$exclude\"",
    ]


def _write_verifier(folder: Path, task: EvalTask) -> None:
    """The check, verify.py as it is (the single definition of soft verification) and the reference patch."""
    _write(folder / VERIFY_MODULE, Path(verify.__file__).read_text(encoding="utf-8"))
    _write(folder / CHECK_SCRIPT, _CHECK_PY)
    _write(folder / REFERENCE_PATCH, task.reference_patch)


def _score_script(task: EvalTask, threshold: float, ref: ImageRef, *, title: str, logs_default: str) -> str:
    return _SCORE_SH.format(title=title, reference=REFERENCE_PATCH, threshold=repr(float(threshold)),
                            logs_env=LOGS_ENV, logs_default=logs_default, workdir_env=WORKDIR_ENV,
                            workdir=ref.workdir, details=f"{TEST_NAME}.json", patch_command=PATCH_COMMAND,
                            check=CHECK_SCRIPT, task_id=shlex.quote(task.task_id))


def _statement(task: EvalTask) -> str:
    return task.problem_statement.rstrip("\n") + "\n"


def _difficulty(task: EvalTask) -> str:
    """By the size of the reference (its changed lines): a rough guide for filtering, not a measured difficulty."""
    lines = len(verify.changed_lines(task.reference_patch))
    return "easy" if lines <= 6 else "medium" if lines <= 30 else "hard"


def _image(task: EvalTask) -> ImageRef:
    ref = ImageRef.from_dict(task.image)
    if ref.kind != "docker" or not ref.image:
        raise ValueError(f"task {task.task_id} has no container image (its commit ran in a {ref.kind} sandbox): "
                         "other harnesses need one; build the commit's image with a Docker engine reachable")
    if not _IMAGE_NAME.match(ref.image) or not _WORKDIR.match(ref.workdir):
        raise ValueError(f"task {task.task_id}: image {ref.image!r} or workdir {ref.workdir!r} cannot go in a "
                         "Dockerfile")
    return ref


def _checked(tasks: list[EvalTask], threshold: float) -> list[str]:
    """The tasks' directory names, once every task is known to export: nothing is written for a bad list."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold!r}")
    seen: dict[str, str] = {}
    for task in tasks:
        if task.task_id in seen:
            raise ValueError(f"task {task.task_id} appears twice")
        if not verify.changed_lines(task.reference_patch):
            raise ValueError(f"task {task.task_id}: its reference patch changes no line, so nothing can verify it")
        _image(task)
        seen[task.task_id] = task_dir_name(task.task_id)
    if len(set(seen.values())) != len(seen):  # a 32-bit hash collision between two ids
        raise ValueError("two task ids map to one directory name; rename one of the tasks")
    return list(seen.values())


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "repo"


# --- writing ---------------------------------------------------------------------------------------------------------


def _write(path: Path, text: str, *, executable: bool = False) -> None:
    """Atomically, and readable by the harness's user (the store's temp files are owner-only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    path.chmod(0o755 if executable else 0o644)


@contextmanager
def _staging(parent: Path) -> Iterator[Path]:
    """A fresh folder inside `parent` (same file system, so its entries can be renamed into place), removed after."""
    for leftover in parent.glob(f"{_STAGING_PREFIX}*"):  # an export that died half-way
        shutil.rmtree(leftover, ignore_errors=True)
    path = Path(tempfile.mkdtemp(dir=parent, prefix=_STAGING_PREFIX))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _swap_in(staging: Path, target: Path, names: Iterable[str], *, is_task: Callable[[Path], bool]) -> None:
    """Move each staged task into `target`, replacing the one there, then drop `target`'s tasks not in `names`."""
    names = list(names)
    trash = staging / ".replaced"
    trash.mkdir()
    for name in names:
        old = target / name
        if old.exists() or old.is_symlink():
            os.replace(old, trash / name)
        os.replace(staging / name, old)
    for entry in target.iterdir():
        if entry.name not in names and not entry.name.startswith(".") and entry.is_dir() and is_task(entry):
            shutil.rmtree(entry)


def _yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120)


def _toml(data: dict[str, Any]) -> str:
    """TOML for task.toml's shapes (top-level scalars, then tables of scalars, lists and inline tables): the standard
    library reads TOML but does not write it."""
    head = [f"{key} = {_toml_value(value)}" for key, value in data.items() if not isinstance(value, dict)]
    tables = [f"\n[{key}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in value.items())
              for key, value in data.items() if isinstance(value, dict)]
    return "\n".join(head) + "\n" + "".join(tables)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):  # JSON's escapes are TOML basic-string escapes; TOML also forbids a raw DEL
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {_toml_value(item)}" for key, item in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")
