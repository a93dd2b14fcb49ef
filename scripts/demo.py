"""Run one repository's DAG end to end with the scripted teacher, then print what the dataset holds.

Invoked by scripts/demo.sh (which sets AIRFLOW_HOME and friends before Airflow is imported). The platform file is
$SERA_PLATFORM_CONFIG or config/platform.yaml, with the scripted teacher and a local GitHub double swapped in.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "plugins"))

from sera_ops.cli import explain_unusable_repo  # noqa: E402
from sera_ops.config import (  # noqa: E402
    ConfigError,
    check_references,
    default_platform_path,
    load_platform,
    load_repos,
)
from sera_ops.store import RunStore  # noqa: E402
from sera_ops.testing.dry_run import SCRIPTED_SERVER, dry_run_platform  # noqa: E402
from sera_ops.testing.local_github import LocalGitHub  # noqa: E402
from sera_ops.testing.scripted_teacher import ScriptedTeacher, ScriptedTeacherConfig  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", default="tinyledger", help="repository config name (config/repos/<name>.yaml)")
    parser.add_argument("--modes", default="full=0.75,partial=0.25",
                        help="scripted teacher's rollout-two behaviour mix (full/partial/none weights)")
    args = parser.parse_args()

    if not preflight(args.repo):
        return 2
    work = ROOT / "var" / "demo"
    os.environ["SERA_DEMO_GITHUB_TOKEN"] = secrets.token_hex(16)  # this demo's local GitHub double only
    with ExitStack() as services:
        teacher = services.enter_context(ScriptedTeacher(ScriptedTeacherConfig(rollout_two_modes=_weights(args.modes))))
        github = services.enter_context(LocalGitHub(work / "github", [DEMO_ORG], os.environ["SERA_DEMO_GITHUB_TOKEN"]))
        platform_file = dry_run_platform(default_platform_path(), work, teacher.url, overrides={
            "github": {"api_url": github.url, "organisation": DEMO_ORG, "token": {"env": "SERA_DEMO_GITHUB_TOKEN"}}})
        os.environ["SERA_PLATFORM_CONFIG"] = str(platform_file)
        subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True,
                       capture_output=True)
        from sera_airflow import run_dag_locally

        platform = load_platform(platform_file)
        spec = next(spec for spec in load_repos(platform)[0] if spec.name == args.repo)
        started = time.monotonic()
        # Whatever teacher the repository names, the demo talks to the scripted one.
        run = run_dag_locally(spec.dag_id, {"model_server": SCRIPTED_SERVER})
        elapsed = time.monotonic() - started
        trains = spec.training is not None and str(run.state) == "success"
        training = run_dag_locally(f"sera_train__{args.repo}") if trains else None
    store = RunStore(platform.storage_root, args.repo, run.run_id)
    stats_file = store.dataset_dir / "stats.json"
    if not stats_file.exists():
        print(f"DAG run {run.state} in {elapsed:.0f} s before assembling a dataset; the task logs above say why")
        return 1
    print(summary(json.loads(stats_file.read_text()), run.state, elapsed))
    mirror = store.read_json(store.path("mirror.json"))
    if mirror:
        print(f"{'mirror':<13}  {mirror['full_name']} ({'private' if mirror['private'] else 'public'}) on the local "
              f"GitHub double, {len(mirror['pushed'])} refs pushed")
    if spec.training is None:
        print(f"{'training':<13}  none configured (no 'training:' section in {spec.source_file.name})")
    elif training is not None:
        print(training_line(store, training))
    print(f"dataset: {store.dataset_dir}")
    return 0 if str(run.state) == "success" and (training is None or str(training.state) == "success") else 1


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


def training_line(store: RunStore, training: object) -> str:
    metrics = sorted((store.repo_dir / "models").glob("*/metrics.json"), key=lambda p: p.stat().st_mtime)
    if str(training.state) != "success" or not metrics:
        return f"{'training':<13}  {training.state}"
    result = json.loads(metrics[-1].read_text())
    return (f"{'training':<13}  {result['method']} on {result['examples']} examples, {result['steps']} steps, loss "
            f"{result['first_loss']:.3f} -> {result['last_loss']:.3f}, model: {metrics[-1].parent}")


DEMO_ORG = "sera-demo"


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
    ]
    return "\n".join(f"{name:<13}  {value}" for name, value in rows)


if __name__ == "__main__":
    sys.exit(main())
