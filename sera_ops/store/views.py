"""Read-only views of the run store for people: which runs exist, how far each instance got, what the agents did, and
how each evaluation run's models did on the held-out tasks.

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
from sera_ops.store.layout import EvalRunFiles, InstanceFiles, RepoStore, RunStore, safe_name
from sera_ops.verify import changed_lines

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9._-]+")
_RESULT_FILE = re.compile(r"(.+)\.s(\d+)\.json")  # <task>.s<seed>.json, as `EvalRunFiles.result` names them
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


@dataclass(frozen=True)
class EvaluationSummary:
    """One evaluation run of a repository: a row of the index."""

    repo: str
    run_id: str  # the evaluation's directory name under <repo>/evals/
    finished: bool  # report.json exists
    is_latest: bool  # what <repo>/evals/latest.json points at
    modified: datetime
    models: list[str]  # the models' labels: the report's (evaluated, then failed), else the plan's
    resolved: dict[str, float | None]  # label -> resolved mean over seeds, for the models the report has a row of
    failed: list[str]  # labels of the models the report lists as failed


@dataclass(frozen=True)
class TaskResults:
    """One model on one task: its episodes over the seeds whose result file exists."""

    task_id: str
    seeds: list[int]  # seeds with a result file, sorted
    missing_seeds: list[int]  # planned seeds without one (yet)
    resolved: int  # episodes that reached the recall threshold
    mean_recall: float | None
    tests_passed: int | None  # episodes whose tests passed; None: no episode ran tests
    exit_statuses: list[str]  # per seed, in seed order


@dataclass(frozen=True)
class ModelResults:
    """One model of an evaluation run: its state and its per-task results."""

    model: str
    server: str | None
    guided: bool
    problem: str | None  # why the plan could not evaluate it (no server)
    error: str | None  # <model>/model.error.json: why its evaluation failed
    evaluated: bool  # <model>/summary.json exists
    episodes: int  # result files that exist
    planned_episodes: int | None  # tasks × seeds of the plan; None without a plan
    tasks: list[TaskResults]


@dataclass(frozen=True)
class EvaluationDetail:
    repo: str
    run_id: str
    finished: bool
    is_latest: bool
    report: dict | None  # report.json
    rows: list[dict]  # the report's summary per evaluated model (`harness.summarize` plus model, server, model_id)
    failed: list[dict]  # the report's failed models: {model, server, error}
    plan: dict | None  # plan.json
    tasks: list[str]  # the plan's task ids (else those the result files name)
    seeds: list[int]
    threshold: float | None
    model_dir: str | None  # the trained model under evaluation (a store URL)
    models: list[ModelResults]
    has_plot: bool  # report.png exists


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


def list_evaluations(root: Path | StorePath, repo: str) -> list[EvaluationSummary]:
    """A repository's evaluation runs, newest first (none before its first `sera_eval` run)."""
    repo_store = _repo(root, repo)
    folder = repo_store.evals_dir
    if not (folder.is_dir() and _inside(repo_store.root, folder)):
        return []
    latest = _latest_evaluation(repo_store)
    summaries = []
    for path in folder.iterdir():
        if not (_is_name(path.name) and path.is_dir() and _inside(repo_store.root, path)):
            continue
        files = EvalRunFiles(path)
        report = _read(files.report)
        if isinstance(report, dict):
            rows = [r for r in report.get("models") or [] if isinstance(r, dict)]
            failed = [str(f.get("model")) for f in report.get("failed") or [] if isinstance(f, dict)]
            models = [str(r.get("model")) for r in rows] + failed
            resolved = {str(r.get("model")): r.get("resolved_mean") for r in rows}
        else:
            models, resolved, failed = [e["label"] for e in _planned(_read(files.plan))], {}, []
        summaries.append(EvaluationSummary(
            repo=repo, run_id=path.name, finished=files.report.exists(), is_latest=path.name == latest,
            modified=_modified_evaluation(files), models=models, resolved=resolved, failed=failed))
    return sorted(summaries, key=lambda s: (s.modified, s.run_id), reverse=True)


def evaluation_detail(root: Path | StorePath, repo: str, run: str) -> EvaluationDetail:
    """An evaluation run: the report's rows and failures once it is written, the plan's models and tasks, and per
    model and task what the result files say so far."""
    files = _evaluation(root, repo, run)
    root = store_root(root)
    report = _read(files.report)
    report = report if isinstance(report, dict) else None
    plan = _read(files.plan)
    plan = plan if isinstance(plan, dict) else None
    rows = [r for r in (report or {}).get("models") or [] if isinstance(r, dict)]
    failed = [f for f in (report or {}).get("failed") or [] if isinstance(f, dict)]
    entries = _planned(plan)
    for label in [str(r.get("model")) for r in rows] + [str(f.get("model")) for f in failed]:
        if label not in {e["label"] for e in entries}:  # a report without its plan (copied, say)
            entries.append({"label": label, "server": None, "guided": False, "problem": None})
    seeds = [s for s in (plan or {}).get("seeds") or [] if isinstance(s, int)]
    if not seeds and report and isinstance(report.get("seeds"), int):
        seeds = list(range(report["seeds"]))
    tasks = [str(t) for t in (plan or {}).get("tasks") or []]
    models = [_model_results(root, files, entry, tasks, seeds, plan is not None) for entry in entries]
    if not tasks:
        tasks = sorted({t.task_id for m in models for t in m.tasks})
    source = report or plan or {}
    return EvaluationDetail(
        repo=repo, run_id=run, finished=report is not None, is_latest=run == _latest_evaluation(RepoStore(root, repo)),
        report=report, rows=rows, failed=failed, plan=plan, tasks=tasks, seeds=seeds,
        threshold=source.get("threshold"), model_dir=source.get("model_dir"), models=models,
        has_plot=_is_file(root, files.report_plot))


def evaluation_report(root: Path | StorePath, repo: str, run: str) -> dict:
    """report.json of an evaluation run; NotFound until the run wrote it."""
    report = _read(_evaluation(root, repo, run).report)
    if not isinstance(report, dict):
        raise NotFound(f"evaluation {run} has no report yet (not finished)")
    return report


def evaluation_plot(root: Path | StorePath, repo: str, run: str) -> StorePath:
    """report.png of an evaluation run; NotFound when there is none (not finished, or no model was evaluated)."""
    files = _evaluation(root, repo, run)
    if not _is_file(store_root(root), files.report_plot):
        raise NotFound(f"evaluation {run} has no plot")
    return files.report_plot


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


def _evaluation(root: Path | StorePath, repo: str, run: str) -> EvalRunFiles:
    """The evaluation run's files, when `run` names an existing evaluation of `repo`, else NotFound."""
    if not _is_name(run):
        raise NotFound(f"invalid evaluation name {run!r}")
    repo_store = _repo(root, repo)
    files = repo_store.evaluation(run)
    _existing(repo_store.root, files.dir, f"{repo}/evals/{run}")
    return files


def _is_file(root: StorePath, path: StorePath) -> bool:
    return path.is_file() and _inside(root, path)


def _planned(plan: Any) -> list[dict]:
    """The plan's model entries ({label, server, guided, problem}), the malformed ones left out."""
    entries = (plan or {}).get("models") if isinstance(plan, dict) else None
    return [{"label": str(e["label"]), "server": e.get("server"), "guided": bool(e.get("guided")),
             "problem": e.get("problem")} for e in entries or [] if isinstance(e, dict) and e.get("label")]


def _model_results(root: StorePath, files: EvalRunFiles, entry: dict, tasks: list[str], seeds: list[int],
                   planned: bool) -> ModelResults:
    """What one model's folder holds: its error, whether it was summarized, and its results by task."""
    label = entry["label"]
    folder = files.model_dir(label)
    inside = folder.is_dir() and _inside(root, folder)
    error = _read(files.error(label)) if inside else None
    if isinstance(error, dict):
        error = str(error.get("error", error))
    results = _results(root, files, label) if inside else []
    by_task: dict[str, list[dict]] = {}
    for result in results:
        by_task.setdefault(str(result.get("task_id")), []).append(result)
    task_ids = tasks + sorted(set(by_task) - set(tasks))
    rows = [_task_results(task_id, by_task.get(task_id, []), seeds) for task_id in task_ids]
    return ModelResults(model=label, server=entry["server"], guided=entry["guided"], problem=entry["problem"],
                        error=None if error is None else str(error),
                        evaluated=inside and _is_file(root, files.summary(label)), episodes=len(results),
                        planned_episodes=len(tasks) * len(seeds) if planned else None, tasks=rows)


def _results(root: StorePath, files: EvalRunFiles, label: str) -> list[dict]:
    """The model's `EvalResult` records: results.jsonl once the model finished (one read), else every result file
    written so far (one per task and seed)."""
    jsonl = files.results(label)
    if _is_file(root, jsonl):
        try:
            lines = jsonl.read_text(encoding="utf-8").splitlines()
            return [r for r in (json.loads(line) for line in lines if line.strip()) if isinstance(r, dict)]
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s: %s", jsonl, exc)
    folder = files.model_dir(label) / "results"
    if not (folder.is_dir() and _inside(root, folder)):
        return []
    found = []
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if _RESULT_FILE.fullmatch(path.name) and _is_name(path.name) and _inside(root, path):
            result = _read(path)
            if isinstance(result, dict):
                found.append(result)
    return found


def _task_results(task_id: str, results: list[dict], planned_seeds: list[int]) -> TaskResults:
    results = sorted((r for r in results if isinstance(r.get("seed"), int)), key=lambda r: r["seed"])
    seeds = [r["seed"] for r in results]
    recalls = [r["recall"] for r in results if isinstance(r.get("recall"), int | float)]
    tested = [bool(r["tests_passed"]) for r in results if r.get("tests_passed") is not None]
    return TaskResults(task_id=task_id, seeds=seeds, missing_seeds=[s for s in planned_seeds if s not in seeds],
                       resolved=sum(1 for r in results if r.get("resolved") is True),
                       mean_recall=sum(recalls) / len(recalls) if recalls else None,
                       tests_passed=sum(tested) if tested else None,
                       exit_statuses=[str(r.get("exit_status")) for r in results])


def _modified_evaluation(files: EvalRunFiles) -> datetime:
    """The newest of the run's folder, plan and report (on object storage, which has no folders: plan and report)."""
    candidates = (files.dir, files.plan, files.report) if is_local(files.dir) else (files.plan, files.report)
    times = [_mtime(p) for p in candidates if p.exists()]
    return datetime.fromtimestamp(max(times, default=0.0), tz=UTC)


def _latest_evaluation(repo: RepoStore) -> str | None:
    pointer = _read(repo.latest_evaluation)
    if not isinstance(pointer, dict) or not pointer.get("run_id"):
        return None
    try:
        return safe_name(str(pointer["run_id"]))
    except ValueError:
        return None


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
