"""Run one repository's loop end to end with the scripted teacher: generate (holding tasks out), train the tiny model,
evaluate base, base + guide, student and teacher on the held-out tasks; then print what the dataset holds and the
evaluation table.

Invoked by scripts/demo.sh (which sets AIRFLOW_HOME and friends before Airflow is imported). The platform file is
$SERA_PLATFORM_CONFIG or config/platform.yaml, with the scripted teacher and a local GitHub double swapped in.
While the DAGs run, everything Airflow, the agents and their subprocesses print goes to var/demo/airflow.log; the
terminal gets one line per task as it finishes (state, duration, the numbers it returned), then the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TextIO
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "plugins"))

from sera_ops.cli import explain_unusable_repo  # noqa: E402
from sera_ops.settings import ConfigError, default_platform_path, load_platform, load_repos
from sera_ops.store.io import read_json_or  # noqa: E402
from sera_ops.store.layout import RepoStore, RunStore  # noqa: E402
from sera_ops.testing.dry_run import SCRIPTED_SERVER, dry_run_platform  # noqa: E402
from sera_ops.testing.local_github import LocalGitHub  # noqa: E402
from sera_ops.testing.model_server import BASE_MODEL_SUBDIR, LocalModelServer  # noqa: E402
from sera_ops.testing.scripted_teacher import ScriptedTeacher, ScriptedTeacherConfig  # noqa: E402
from sera_ops.validation import check_references  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", default="tinyledger", help="repository config name (config/repos/<name>.yaml)")
    parser.add_argument("--modes", default="full=0.75,partial=0.25",
                        help="scripted teacher's rollout-two behaviour mix (full/partial/none weights)")
    args = parser.parse_args()

    if not preflight(args.repo):
        return 2
    work = ROOT / "var" / "demo"
    log = work / "airflow.log"
    os.environ["SERA_DEMO_GITHUB_TOKEN"] = secrets.token_hex(16)  # this demo's local GitHub double only
    with ExitStack() as services:
        teacher = services.enter_context(ScriptedTeacher(ScriptedTeacherConfig(rollout_two_modes=_weights(args.modes))))
        github = services.enter_context(LocalGitHub(work / "github", [DEMO_ORG], os.environ["SERA_DEMO_GITHUB_TOKEN"]))
        overrides = {"github": {"api_url": github.url, "organisation": DEMO_ORG,
                                "token": {"env": "SERA_DEMO_GITHUB_TOKEN"}}}
        platform_file = dry_run_platform(default_platform_path(), work, teacher.url, overrides=overrides)
        os.environ["SERA_PLATFORM_CONFIG"] = str(platform_file)
        platform = load_platform(platform_file)
        spec = next(spec for spec in load_repos(platform)[0] if spec.name == args.repo)
        print(f"[demo] one line per task as it finishes; Airflow's log: {log.relative_to(ROOT)}", flush=True)
        terminal = services.enter_context(output_to(log))
        services.enter_context(task_progress(terminal))
        subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True,
                       capture_output=True)
        from sera_airflow import run_dag_locally

        def run_dag(dag_id: str, conf: dict | None = None) -> Any:
            print(f"[demo] {dag_id}", file=terminal)
            return run_dag_locally(dag_id, conf)

        started = time.monotonic()
        # Whatever teacher the repository names, the demo talks to the scripted one.
        run = run_dag(spec.dag_id, {"model_server": SCRIPTED_SERVER})
        elapsed = time.monotonic() - started
        trains = spec.training is not None and str(run.state) == "success"
        training = run_dag(f"sera_train__{args.repo}") if trains else None
        evaluation = None
        model_dir = RepoStore(platform.storage_root, args.repo).latest_model()
        if spec.eval.holds_out and training is not None and str(training.state) == "success" and model_dir:
            servers = {role: services.enter_context(LocalModelServer(path, role, max_new_tokens=EVAL_REPLY_TOKENS))
                       for role, path in (("student", model_dir), ("base", model_dir / BASE_MODEL_SUBDIR))}
            os.environ["SERA_PLATFORM_CONFIG"] = str(dry_run_platform(default_platform_path(), work, teacher.url,
                                                                      overrides={**overrides, "model_servers": {
                f"{role}-local": {"base_url": server.base_url, "model": role, "concurrency": 1, "timeout_s": 120}
                for role, server in servers.items()}}))
            evaluation = run_dag(f"sera_eval__{args.repo}", {"teacher_server": SCRIPTED_SERVER,
                                                              "student_server": "student-local",
                                                              "base_server": "base-local"})
    store = RepoStore(platform.storage_root, args.repo).run(run.run_id)
    stats_file = store.dataset.stats
    if not stats_file.exists():
        print(f"DAG run {run.state} in {elapsed:.0f} s before assembling a dataset; {log.relative_to(ROOT)} says why")
        return 1
    print(summary(json.loads(stats_file.read_text()), run.state, elapsed))
    mirror = store.read_json(store.mirror)
    if mirror:
        print(f"{'mirror':<13}  {mirror['full_name']} ({'private' if mirror['private'] else 'public'}) on the local "
              f"GitHub double, {len(mirror['pushed'])} refs pushed")
    if spec.training is None:
        print(f"{'training':<13}  none configured (no 'training:' section in {spec.source_file.name})")
    elif training is not None:
        print(training_line(store, training))
    if evaluation is not None:
        print(evaluation_lines(store.repo_store, evaluation))
    print(f"dataset: {store.dataset_dir}")
    finished = [dag_run for dag_run in (run, training, evaluation) if dag_run is not None]
    return 0 if all(str(dag_run.state) == "success" for dag_run in finished) else 1


def preflight(repo: str) -> bool:
    """Stop before starting anything when the repository cannot run: an invalid or missing file, an unreadable
    source. The same lines as `sera run` and `sera validate` print."""
    try:
        platform = load_platform()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return False
    specs, errors = load_repos(platform)
    spec = next((spec for spec in specs if spec.name == repo), None)
    if spec is None:
        explain_unusable_repo(repo, specs, errors)
        return False
    problems = [finding for finding in check_references(platform, [spec]) if finding.level == "error"]
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return not problems


@contextmanager
def output_to(log: Path) -> Iterator[TextIO]:
    """Send this process's stdout and stderr to `log` at the file-descriptor level, which also catches Airflow's
    log handlers (bound to the streams at start), mini-swe-agent's console and every subprocess; yields the
    terminal, for the progress lines."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as sink, os.fdopen(os.dup(saved[1]), "w", buffering=1) as terminal:
        for fd in saved:
            os.dup2(sink.fileno(), fd)
        try:
            yield terminal
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)


@contextmanager
def task_progress(out: TextIO) -> Iterator[None]:
    """A progress line for each task instance that dag.test() runs. dag.test has no per-task hook, so the function
    it runs every task instance with (`airflow.sdk.definitions.dag._run_task`, Airflow 3.3) is wrapped."""
    from airflow.sdk.definitions import dag as sdk_dag

    run_task = sdk_dag._run_task

    def reporting(*, ti: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        result = run_task(ti=ti, **kwargs)
        state = str(getattr(ti.state, "value", ti.state))  # an enum from the SDK or from core, whichever set it
        if state == "success":
            detail = _clip(counts(ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index)), 70)
        else:  # why, in full: the log has the traceback
            error = getattr(result, "error", None)
            detail = f"{type(error).__name__}: {error}".splitlines()[0] if error else ""
        name = ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else "")
        print(f"  {name:<28} {state:<8} {time.monotonic() - started:6.1f} s  {detail}".rstrip(), file=out)
        return result

    with mock.patch.object(sdk_dag, "_run_task", reporting):
        yield


def counts(value: Any) -> str:
    """The counts in a task's return value: `-> 8`, `-> 2 items`, or `instances=8 failed=0 rollout1.ran=8` for a
    dict (text, times and other floats left out; in a nested dict only what is not zero)."""
    if _is_count(value):
        return f"-> {value}"
    if isinstance(value, list):
        return f"-> {len(value)} item{'' if len(value) == 1 else 's'}"
    pairs = []
    for key, item in value.items() if isinstance(value, dict) else ():
        if _is_count(item):
            pairs.append(f"{key}={item}")
        elif isinstance(item, list):
            pairs.append(f"{key}={len(item)}")
        elif isinstance(item, dict):
            pairs += [f"{key}.{k}={v}" for k, v in item.items() if _is_count(v) and v]
    return " ".join(pairs)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def training_line(store: RunStore, training: object) -> str:
    metrics = sorted(store.repo_store.models_dir.glob("*/metrics.json"), key=lambda p: p.stat().st_mtime)
    if str(training.state) != "success" or not metrics:
        return f"{'training':<13}  {training.state}"
    result = json.loads(metrics[-1].read_text())
    return (f"{'training':<13}  {result['method']} on {result['examples']} examples, {result['steps']} steps, loss "
            f"{result['first_loss']:.3f} -> {result['last_loss']:.3f}, model: {metrics[-1].parent}")


def evaluation_lines(repo: RepoStore, evaluation: object) -> str:
    """The evaluation's table (base, base + guide, student, teacher on the held-out tasks), as the model card has it."""
    latest = read_json_or(repo.latest_evaluation)
    if not latest:
        return f"{'evaluation':<13}  {evaluation.state}"
    files = repo.evaluation(latest["run_id"])
    return f"{'evaluation':<13}  {evaluation.state}: {files.report}\n{files.report_text.read_text(encoding='utf-8')}"


DEMO_ORG = "sera-demo"
EVAL_REPLY_TOKENS = 64
"""The local model servers' cap on a reply: the tiny student's episodes stay seconds long on CPU."""


def _weights(text: str) -> dict[str, float]:
    return {name: float(weight) for name, weight in (item.split("=") for item in text.split(","))}


def summary(stats: dict, state: object, elapsed: float) -> str:
    rows = [
        ("DAG run", f"{state} in {elapsed:.0f} s"),
        ("commits", f"{stats['commits']['ready']} ready of {stats['commits']['selected']} selected"),
        ("functions", stats["functions"]),
        ("instances", stats["instances"]),
        ("rollout one", f"{stats['rollout_one']} episodes ({stats['rollout_one_attempts']} attempts), "
                        f"{stats['judged_good']} judged good"),
        ("synthetic PRs", stats["synthetic_prs"]),
        ("rollout two", f"{stats['rollout_two']} episodes, {stats['verified']} verified "
                        f"(threshold {stats['threshold']}, mean recall {stats['mean_recall']})"),
        ("records", f"t1.jsonl {stats['records']['t1']}, t2.jsonl {stats['records']['t2']} ({stats['format']})"),
        ("teacher", f"{stats['usage']['total']['calls']} calls, {stats['usage']['total']['prompt_tokens']:,} prompt + "
                    f"{stats['usage']['total']['completion_tokens']:,} completion tokens, ${stats['cost_usd']:.4f}"),
    ]
    return "\n".join(f"{name:<13}  {value}" for name, value in rows)


if __name__ == "__main__":
    sys.exit(main())
