"""Read-only views of the run store for people: which runs exist, how far each instance got, and what the agents did.

The dataset viewer (plugins/sera_viewer.py) serves these over HTTP, so every name here may come from a URL: it is
checked against the store's own naming (what `store.layout.safe_name` produces) and the resolved path must stay under
the storage root, else `NotFound` (a LookupError). Files that a stage has not written (yet) read as None; nothing here
writes.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sera_ops.store.io import StorePath, is_local, store_root
from sera_ops.store.layout import InstanceFiles, RepoStore, RunStore
from sera_ops.verify import changed_lines

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9._-]+")
STAGES = ("rollout1", "synth", "rollout2")


class NotFound(LookupError):
    """An invalid name, or one the store does not hold (a 404 to the viewer). Its own class, so that a KeyError
    from a bug is not mistaken for it."""


@dataclass(frozen=True)
class RunSummary:
    repo: str
    run_id: str  # the run's directory name (the filesystem-safe form of the Airflow run id)
    stats: dict | None  # dataset/stats.json; None until `assemble` ran
    is_latest: bool  # what <repo>/datasets/latest.json points at
    modified: datetime


@dataclass(frozen=True)
class InstanceStatus:
    """How far one instance got: one row of a run's table."""

    instance_id: str
    start_fn: str | None
    start_fn_file: str | None
    commit: str | None
    rollout1_exit_status: str | None
    rollout1_attempts: int | None
    judged_good: bool | None
    synthetic_pr: bool
    rollout2_exit_status: str | None
    recall: float | None
    resolved: bool | None
    errors: dict[str, str] = field(default_factory=dict)  # stage -> "ExceptionType: message"
    duplicate_of: str | None = None  # the instance whose identical rollout-one patch got the synthetic PR instead


@dataclass(frozen=True)
class RunDetail:
    repo: str
    run_id: str
    stats: dict | None
    manifest: dict | None
    is_latest: bool
    instances: list[InstanceStatus]


@dataclass(frozen=True)
class Message:
    """One trajectory message without mini-swe-agent's `extra` (usage, raw output): what the model saw and said."""

    role: str
    content: str
    tool_calls: list[str] = field(default_factory=list)  # "bash: <command>" for each command the assistant ran


@dataclass(frozen=True)
class Attempt:
    """One rollout-one attempt and the judge's verdict on its patch: why an instance took several tries."""

    number: int
    exit_status: str | None
    changed_lines: int  # as recall counts them (`verify.changed_lines`); 0: an empty patch, never judged
    judged_good: bool | None
    judge_answer: str | None  # what the judge wrote in its <output> tags; None when it never answered in them
    judge_calls: int


@dataclass(frozen=True)
class InstanceDetail:
    repo: str
    run_id: str
    status: InstanceStatus
    task: str | None  # rollout one's (vague) task text
    patch_one: str | None
    synthetic_pr: str | None
    patch_two: str | None
    verdict: dict | None
    attempts: list[Attempt]
    trajectory_one: list[Message] | None  # the final rollout-one attempt
    trajectory_two: list[Message] | None


def list_repos(root: Path | StorePath) -> list[str]:
    """Repositories that have at least one run directory."""
    root = store_root(root)
    if not root.is_dir():
        return []
    repos = []
    for candidate in root.iterdir():
        try:
            _repo(root, candidate.name)
        except NotFound:
            continue
        repos.append(candidate.name)
    return sorted(repos)


def list_runs(root: Path | StorePath, repo: str) -> list[RunSummary]:
    """A repository's runs, newest first."""
    repo_store = _repo(root, repo)
    latest = _latest_run(repo_store)
    summaries = [
        RunSummary(repo=repo, run_id=run.name, stats=_read(run.dataset.stats), is_latest=run.name == latest,
                   modified=_modified(run))
        for run in map(repo_store.run, repo_store.run_names()) if _is_name(run.name)
    ]
    return sorted(summaries, key=lambda s: (s.modified, s.run_id), reverse=True)


def run_detail(root: Path | StorePath, repo: str, run: str) -> RunDetail:
    store = _run(root, repo, run)
    return RunDetail(repo=repo, run_id=run, stats=_read(store.dataset.stats), manifest=_read(store.manifest),
                     is_latest=run == _latest_run(store.repo_store),
                     instances=sorted((_status(store, r) for r in _read(store.instances) or []),
                                      key=lambda s: s.instance_id))


def instance_detail(root: Path | StorePath, repo: str, run: str, instance_id: str) -> InstanceDetail:
    store = _run(root, repo, run)
    if not _is_name(instance_id):
        raise NotFound(f"invalid instance id {instance_id!r}")
    records = {r["instance_id"]: r for r in _read(store.instances) or []}
    files = store.instance(instance_id)
    if instance_id not in records and not (files.dir.is_dir() and _inside(store.root, files.dir)):
        raise NotFound(f"no such instance: {instance_id}")  # a directory without a sampled record is shown
    status = _status(store, records.get(instance_id, {"instance_id": instance_id}))
    one = _read(files.rollout_one) or {}
    final = one.get("final") or {}
    two = _read(files.rollout_two) or {}
    synth = _read(files.synth) or {}
    return InstanceDetail(
        repo=repo, run_id=run, status=status, task=final.get("task"), patch_one=final.get("patch"),
        synthetic_pr=synth.get("synth_pr"), patch_two=two.get("patch"), verdict=_read(files.verdict),
        attempts=[_attempt(number, a) for number, a in enumerate(one.get("attempts") or []) if isinstance(a, dict)],
        trajectory_one=_messages(_read_trajectory_one(files, final.get("trajectory_file"))),
        trajectory_two=_messages(_read(files.rollout_two_trajectory)))


def dataset_files(root: Path | StorePath, repo: str, run: str) -> list[str]:
    """The names of the files in a run's `dataset/` (card, Parquet, JSONL, stats and whatever plots it has), sorted;
    empty until `assemble` made the folder. A file that resolves outside the storage root is left out."""
    store = _run(root, repo, run)  # an unknown run is a 404, a run not assembled yet is not
    folder = store.dataset.dir
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if _is_name(p.name) and p.is_file() and _inside(store.root, p))


# ---------------------------------------------------------------- helpers


def _is_name(value: str) -> bool:
    """The store's own names (see `safe_name`): never empty, never hidden or temporary files, never `..`."""
    return bool(_NAME.fullmatch(value)) and value.strip("._") == value and ".." not in value


def _inside(root: StorePath, path: StorePath) -> bool:
    """Whether `path` stays under `root` once symbolic links are followed (object stores have none)."""
    return not is_local(root) or Path(path).resolve().is_relative_to(Path(root).resolve())


def _existing(root: StorePath, path: StorePath, name: str) -> None:
    """NotFound unless `path` (named `name` in a URL) is an existing directory inside the storage root."""
    if not (path.is_dir() and _inside(root, path)):
        raise NotFound(f"no such entry: {name}")


def _repo(root: Path | StorePath, repo: str) -> RepoStore:
    """The repository's store, when `repo` names one that has runs, else NotFound: these names arrive from URLs."""
    if not _is_name(repo):
        raise NotFound(f"invalid repository name {repo!r}")
    store = RepoStore(root, repo)
    _existing(store.root, store.runs_dir, repo)
    return store


def _run(root: Path | StorePath, repo: str, run: str) -> RunStore:
    """The run's store, when `run` names an existing run of `repo`, else NotFound."""
    if not _is_name(run):
        raise NotFound(f"invalid run name {run!r}")
    store = _repo(root, repo).run(run)
    _existing(store.root, store.run_dir, f"{repo}/{run}")
    return store


def _read(path: StorePath) -> Any:
    """A JSON file, or None when it is missing or unreadable: a viewer shows what exists."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None


def _modified(run: RunStore) -> datetime:
    """Directories change when stages add files to them; the newest of the run's main ones dates the run. On object
    storage, which has no directories, the run's first and last files (manifest, stats) date it."""
    if is_local(run.root):
        candidates = (run.run_dir, run.run_dir / "instances", run.dataset.dir)
    else:
        candidates = (run.manifest, run.dataset.stats)
    times = [_mtime(p) for p in candidates if p.exists()]
    return datetime.fromtimestamp(max(times, default=0.0), tz=UTC)


def _mtime(path: StorePath) -> float:
    if is_local(path):
        return path.stat().st_mtime
    modified = path.fs.modified(path.path)
    return modified.timestamp() if modified.tzinfo else modified.replace(tzinfo=UTC).timestamp()


def _latest_run(repo: RepoStore) -> str | None:
    pointer = _read(repo.latest_dataset)
    if not isinstance(pointer, dict) or not pointer.get("run_id"):
        return None
    return repo.run(pointer["run_id"]).name


def _status(store: RunStore, record: dict) -> InstanceStatus:
    instance_id = record["instance_id"]
    files = store.instance(instance_id)
    one = _read(files.rollout_one)
    two = _read(files.rollout_two)
    synth = _read(files.synth)
    verdict = _read(files.verdict) or {}
    duplicate = _read(files.duplicate) or {}
    errors = {}
    for stage in STAGES:
        error = _read(files.error(stage))
        if error is not None:
            errors[stage] = str(error.get("error", error)) if isinstance(error, dict) else str(error)
    return InstanceStatus(
        instance_id=instance_id, start_fn=record.get("start_fn"), start_fn_file=record.get("start_fn_file"),
        commit=record.get("commit"),
        rollout1_exit_status=(one.get("final") or {}).get("exit_status") if one else None,
        rollout1_attempts=len(one.get("attempts") or []) if one else None,
        judged_good=one.get("is_good_patch") if one else None,
        synthetic_pr=bool(synth and synth.get("synth_pr")),
        rollout2_exit_status=two.get("exit_status") if two else None,
        recall=verdict.get("recall"), resolved=verdict.get("resolved"), errors=errors,
        duplicate_of=duplicate.get("duplicate_of"))


def _attempt(number: int, attempt: dict) -> Attempt:
    rollout, judgement = attempt.get("rollout") or {}, attempt.get("judgement") or {}
    return Attempt(number=rollout.get("attempt", number), exit_status=rollout.get("exit_status"),
                   changed_lines=len(changed_lines(rollout.get("patch") or "")),
                   judged_good=judgement.get("is_good_patch"), judge_answer=judgement.get("answer"),
                   judge_calls=judgement.get("calls", 0))


def _read_trajectory_one(files: InstanceFiles, trajectory_file: str | None) -> Any:
    """The final attempt's trajectory; without rollout one's record (a failed stage) the last attempt that left one."""
    if trajectory_file and _is_name(trajectory_file):
        return _read(files.trajectory(trajectory_file))
    attempts = files.attempt_trajectories()
    return _read(attempts[-1]) if attempts else None


def _messages(trajectory: Any) -> list[Message] | None:
    if not isinstance(trajectory, dict):
        return None
    return [Message(role=str(m.get("role", "")), content=_text(m.get("content")), tool_calls=_calls(m))
            for m in trajectory.get("messages") or [] if isinstance(m, dict)]


def _calls(message: dict) -> list[str]:
    """The commands an assistant message ran: its tool calls, or in text mode the actions that mini-swe-agent parsed
    out of the reply (`extra.actions`)."""
    if message.get("tool_calls"):
        return [_tool_call(call) for call in message["tool_calls"]]
    if message.get("role") != "assistant":
        return []
    actions = (message.get("extra") or {}).get("actions") or []
    return [f"bash: {action['command']}" for action in actions if isinstance(action, dict) and "command" in action]


def _text(content: Any) -> str:
    """Message content as text: a string, or the text parts of an OpenAI content list."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in content)
    return str(content)


def _tool_call(call: Any) -> str:
    """'bash: <command>' for the agent's bash tool, the raw arguments for anything else."""
    function = call.get("function", {}) if isinstance(call, dict) else {}
    name, arguments = function.get("name", "?"), function.get("arguments", "")
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and set(parsed) == {"command"}:
        return f"{name}: {parsed['command']}"
    return f"{name}: {arguments if isinstance(arguments, str) else json.dumps(arguments)}"
