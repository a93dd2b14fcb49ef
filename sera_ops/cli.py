"""`sera`: check the configuration, run one repository without a scheduler, trigger it on Airflow, show statistics.

    sera validate                       platform.yaml and every repository file; one line per problem, exit 1 if any
    sera validate --platform config/examples/platform-vllm.yaml my-repo.yaml   these files against that platform
    sera run tinyledger --max-functions 4 --run-id try-1
    sera trigger tinyledger --conf '{"max_functions": 4}' --wait   on a running Airflow, over its REST API (for CI)
    sera stats tinyledger try-1
    sera eval tinyledger --model-server my-vllm --seeds 3      the held-out tasks on that server, without a scheduler
    sera export-tasks tinyledger --format harbor --out tasks/  the held-out tasks for Harbor (or swebench)
    sera pools --out pools.json && airflow pools import pools.json
    sera curate var/store/tinyledger/runs/*/dataset --out curated --filter long_edit=40 --subsample repo:500
    sera scrape-issues acme/ledger -n 200 --labels bug --out ledger-issues.json   then synth.demo_issues: that file
    sera push-dataset var/store/tinyledger/runs/<run id>/dataset --repo-id acme/ledger-sft --dry-run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from sera_ops.build.images import ImageBuildError
from sera_ops.dataset import card, curate
from sera_ops.errors import PermanentError
from sera_ops.pipeline.context import BatchFailed, RunContext, RunParams
from sera_ops.pipeline.run import run_all
from sera_ops.settings import (
    EVAL_MODELS,
    ConfigError,
    GitHubDemoIssues,
    PlatformConfig,
    RepoSpec,
    load_platform,
    load_repo,
    load_repos,
)
from sera_ops.sources.mirror import MirrorError
from sera_ops.sources.repos import SourceError
from sera_ops.store.io import atomic_write_text
from sera_ops.store.layout import RepoStore
from sera_ops.synth import demo_issues
from sera_ops.synth.demo_issues import DemoIssuesError
from sera_ops.validation import check_references

USER_ERRORS = (ValueError, SourceError, ImageBuildError, MirrorError, BatchFailed, PermanentError, DemoIssuesError)
"""Problems the user can fix (configuration, sources, images, the teacher): one line on stderr, no traceback."""


def _validate(args: argparse.Namespace) -> int:
    try:
        platform = load_platform(args.platform)
    except ConfigError as exc:
        print(f"error   {exc}")
        return 1
    if args.files:
        specs, errors = [], []
        for path in args.files:
            try:
                specs.append(load_repo(path, platform))
            except ConfigError as exc:
                errors.append(exc)
    else:
        specs, errors = load_repos(platform)
    findings = check_references(platform, specs, check_sources=not args.no_source_check)
    failed = {finding.file for finding in findings if finding.level == "error"} | {error.file for error in errors}
    print(f"{'error' if str(platform.source_file) in failed else 'ok':<7} {'platform':<32} {platform.source_file}")
    for spec in specs:
        print(f"{'error' if str(spec.source_file) in failed else 'ok':<7} {spec.dag_id:<32} {spec.source_file}")
    for error in errors:
        print(f"error   {error}")
    for finding in findings:
        print(f"{finding.level:<7} {finding}")
    return 1 if failed else 0


def _run(args: argparse.Namespace) -> int:
    found = _configured_repo(args)
    if isinstance(found, int):
        return found
    platform, spec = found
    run_id = _run_id(args)
    params = RunParams(commits=args.commit or [], max_functions=args.max_functions, model_server=args.model_server,
                       threshold=args.threshold)
    stats = run_all(RunContext.create(platform, spec, run_id, params))
    print(json.dumps(stats, indent=2))
    print(f"dataset: {stats['dataset_dir']}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from sera_ops.pipeline.evaluation import EvalContext, EvalParams, evaluate_all

    found = _configured_repo(args)
    if isinstance(found, int):
        return found
    platform, spec = found
    run_id = _run_id(args)
    params = EvalParams(models=args.models or [], model_servers=args.model_server or [],
                        student_server=args.student_server, base_server=args.base_server,
                        teacher_server=args.teacher_server, model_dir=args.model_dir, seeds=args.seeds)
    ctx = EvalContext(RunContext.create(platform, spec, run_id), params)
    report = evaluate_all(ctx)
    print(ctx.files.report_text.read_text(encoding="utf-8"))
    print(f"report: {ctx.files.report}")
    return 1 if any(not failure.get("skipped") for failure in report["failed"]) else 0


def _export_tasks(args: argparse.Namespace) -> int:
    from sera_ops.evaluate import exports

    found = _configured_repo(args)
    if isinstance(found, int):
        return found
    platform, spec = found
    tasks = RepoStore(platform.storage_root, spec.name).tasks()
    if not tasks:
        print(f"repository '{spec.name}' has no evaluation tasks yet: hold some out with 'eval:' in "
              f"{spec.source_file} and run it", file=sys.stderr)
        return 2
    export = exports.export_harbor if args.format == "harbor" else exports.export_swebench
    export(tasks, args.out, threshold=spec.verify.threshold)
    print(f"{len(tasks)} tasks exported for {args.format} to {args.out}")
    return 0


def _run_id(args: argparse.Namespace) -> str:
    return args.run_id or f"cli__{datetime.now(UTC):%Y-%m-%dT%H-%M-%S}"


def _configured_repo(args: argparse.Namespace) -> tuple[PlatformConfig, RepoSpec] | int:
    """The platform and `args.repo`'s settings, or the exit code after saying why the repository cannot run."""
    platform = load_platform(args.platform)
    specs, errors = load_repos(platform)
    spec = next((s for s in specs if s.name == args.repo), None)
    if spec is None:
        return explain_unusable_repo(args.repo, specs, errors)
    return platform, spec


def explain_unusable_repo(name: str, specs: list[RepoSpec], errors: list[ConfigError]) -> int:
    """Why `name` cannot run: its file is invalid (and why), or there is no such file."""
    invalid = next((error for error in errors if Path(error.file).stem == name), None)
    if invalid is not None:
        print(f"repository '{name}' has an invalid configuration: {invalid}", file=sys.stderr)
    else:
        known = ", ".join(s.name for s in specs) or "none"
        print(f"unknown repository '{name}': no {name}.yaml in the repos_dir (valid configs: {known}); "
              "see `sera validate`", file=sys.stderr)
    return 2


def _stats(args: argparse.Namespace) -> int:
    path = RepoStore(load_platform(args.platform).storage_root, args.repo).run(args.run_id).dataset.stats
    if not path.exists():
        print(f"no statistics at {path}: the run has not been assembled (or the repo/run id is wrong)",
              file=sys.stderr)
        return 2
    print(path.read_text(), end="")
    return 0


def _curate(args: argparse.Namespace) -> int:
    steps = [curate.parse_filter(text) for text in args.filter]
    steps += [curate.parse_subsample(args.subsample)] if args.subsample else []
    report = curate.curate(args.datasets, args.out, steps, seed=args.seed, tokenizer_dir=args.tokenizer)
    for step in report["steps"]:
        counts = ", ".join(f"{split} {step[split]['before']} -> {step[split]['after']}" for split in curate.SPLITS)
        print(f"{step['name']:<13}  {counts}")
    print(f"{'records':<13}  " + ", ".join(f"{split}.jsonl {n}" for split, n in report["records"].items()))
    print(f"dataset: {args.out}")
    return 0


def _scrape_issues(args: argparse.Namespace) -> int:
    source = GitHubDemoIssues(github=args.repo, max_issues=args.n, labels=args.labels, api_url=args.api_url)
    issues = demo_issues.scrape(source, load_platform(args.platform).github)
    atomic_write_text(args.out, json.dumps([issue.text for issue in issues], indent=2, ensure_ascii=False) + "\n")
    print(f"{len(issues)} closed issue(s) of {args.repo} written to {args.out} (use the file as synth.demo_issues)")
    return 0


def _push_dataset(args: argparse.Namespace) -> int:
    files = card.push_dataset(args.dataset, args.repo_id, private=not args.public, dry_run=args.dry_run)
    visibility = "public" if args.public else "private"
    print(f"{'would upload' if args.dry_run else 'uploaded'} {len(files)} file(s) to the {visibility} dataset "
          f"https://huggingface.co/datasets/{args.repo_id}")
    for path in files:
        print(f"  {path.name:<12}  {path.stat().st_size:>10} bytes")
    return 0


def _pools(args: argparse.Namespace) -> int:
    text = json.dumps(load_platform(args.platform).pools(), indent=2) + "\n"
    if args.out:
        atomic_write_text(Path(args.out), text)
    else:
        print(text, end="")
    return 0


TOKEN_ENV, USERNAME_ENV, PASSWORD_ENV = "SERA_AIRFLOW_TOKEN", "SERA_AIRFLOW_USERNAME", "SERA_AIRFLOW_PASSWORD"
TERMINAL_STATES = ("success", "failed")


class AirflowApiError(RuntimeError):
    """The Airflow REST API refused a call or cannot be reached; the message says what to check."""


class AirflowApi:
    """The few Airflow 3 REST API v2 calls `sera trigger` makes (stdlib HTTP, so sera_ops needs no Airflow)."""

    def __init__(self, base_url: str, timeout_s: float = 30.0):
        self.base_url, self.timeout_s = base_url.rstrip("/"), timeout_s
        self.token = os.environ.get(TOKEN_ENV) or None

    def login(self) -> None:
        """A JWT from the simple auth manager's /auth/token when a username and password are given (else the token
        from the environment, or none for an all-admins Airflow)."""
        username, password = os.environ.get(USERNAME_ENV), os.environ.get(PASSWORD_ENV)
        if self.token or not (username and password):
            return
        self.token = self.call("POST", "/auth/token", {"username": username, "password": password})["access_token"]

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(self.base_url + path, method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json", "Accept": "application/json"})
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise AirflowApiError(f"{method} {path}: HTTP {exc.code}: {_detail(exc)}{_hint(exc.code)}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise AirflowApiError(f"cannot reach Airflow at {self.base_url} ({getattr(exc, 'reason', exc)}); start "
                                  "the API server or pass --api-url") from None


def _detail(exc: urllib.error.HTTPError) -> str:
    """The first line of the API's explanation: FastAPI's `detail` is a message (a param error adds the JSON schema
    on later lines) or a list of validation errors."""
    text = exc.read().decode(errors="replace")
    try:
        detail = json.loads(text).get("detail", text)
    except (ValueError, AttributeError):
        detail = text
    if isinstance(detail, list) and detail:
        detail = detail[0].get("msg", detail[0]) if isinstance(detail[0], dict) else detail[0]
    return (str(detail).strip().splitlines() or [str(exc.reason)])[0]


def _hint(code: int) -> str:
    if code in (401, 403):
        return (f" (set {TOKEN_ENV}, or {USERNAME_ENV} and {PASSWORD_ENV} for a user allowed to trigger DAGs)")
    if code == 404:
        return " (is the repository file deployed and parsed? check the DAG list and import errors in the UI)"
    return ""


def _trigger(args: argparse.Namespace) -> int:
    try:
        conf = json.loads(args.conf)
    except ValueError as exc:
        raise ValueError(f"--conf is not valid JSON: {exc}") from None
    if not isinstance(conf, dict):
        raise ValueError('--conf must be a JSON object such as \'{"max_functions": 4}\'')
    api = AirflowApi(args.api_url)
    dag_id = f"sera__{args.repo}"
    dag_path = f"/api/v2/dags/{quote(dag_id, safe='')}"
    api.login()
    if api.call("GET", dag_path).get("is_paused"):
        if args.unpause:
            api.call("PATCH", dag_path, {"is_paused": False})
        else:
            print(f"note: {dag_id} is paused, so the run stays queued until it is unpaused (or pass --unpause)",
                  file=sys.stderr)
    run = api.call("POST", f"{dag_path}/dagRuns", {"logical_date": None, "conf": conf})
    print(f"triggered {dag_id} run {run['dag_run_id']}")
    if not args.wait:
        return 0
    run_path = f"{dag_path}/dagRuns/{quote(run['dag_run_id'], safe='')}"
    started, state = time.monotonic(), run["state"]
    while state not in TERMINAL_STATES:
        if time.monotonic() - started > args.timeout:
            print(f"timed out: the run is still {state} after {args.timeout:.0f} s", file=sys.stderr)
            return 1
        time.sleep(args.poll)
        state = api.call("GET", run_path)["state"]
    print(f"{'state':<13}  {state} after {time.monotonic() - started:.0f} s")
    if state != "success":
        failed = [_task_label(ti) for ti in api.call("GET", f"{run_path}/taskInstances?limit=100")["task_instances"]
                  if ti["state"] in ("failed", "upstream_failed")]
        print(f"{'failed tasks':<13}  {', '.join(failed) or 'none listed (see the run in the UI)'}")
        return 1
    summary = api.call("GET", f"{run_path}/taskInstances/assemble/xcomEntries/return_value")["value"]
    records = ", ".join(f"{name}.jsonl {count}" for name, count in summary["records"].items())
    for name, value in (("instances", summary["instances"]), ("judged good", summary["judged_good"]),
                        ("verified", summary["verified"]), ("records", records)):
        print(f"{name:<13}  {value}")
    print(f"dataset: {summary['dataset_dir']}")
    return 0


def _task_label(ti: dict) -> str:
    return f"{ti['task_id']}[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else ti["task_id"]


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="sera", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    platform_help = "platform.yaml (default: $SERA_PLATFORM_CONFIG or config/platform.yaml)"
    root.add_argument("--platform", help=platform_help)
    # Also accepted after the command; SUPPRESS keeps a value given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--platform", default=argparse.SUPPRESS, help=platform_help)
    commands = root.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", parents=[common],
                                   help="check platform.yaml, repository files, their sources and references")
    validate.add_argument("files", nargs="*", help="repository files to check (default: every file in repos_dir)")
    validate.add_argument("--no-source-check", action="store_true",
                          help="do not check that each source exists (e.g. example files with placeholder paths)")
    validate.set_defaults(func=_validate)
    run = commands.add_parser("run", parents=[common], help="run one repository's pipeline in this process")
    run.add_argument("repo")
    run.add_argument("--run-id")
    run.add_argument("--commit", action="append", help="commit to use (repeatable)")
    run.add_argument("--max-functions", type=int)
    run.add_argument("--model-server")
    run.add_argument("--threshold", type=float)
    run.set_defaults(func=_run)
    evaluation = commands.add_parser("eval", parents=[common],
                                     help="evaluate models on one repository's held-out tasks in this process")
    evaluation.add_argument("repo")
    evaluation.add_argument("--model-server", action="append",
                            help="a platform model server to evaluate (repeatable); alone, only these are evaluated")
    evaluation.add_argument("--models", nargs="+", choices=EVAL_MODELS,
                            help="which of the configured roles to evaluate (default: eval.models)")
    evaluation.add_argument("--student-server", help="the model server serving the trained model")
    evaluation.add_argument("--base-server", help="the model server serving its base model")
    evaluation.add_argument("--teacher-server", help="the teacher's model server (default: the repository's)")
    evaluation.add_argument("--model-dir", help="a trained model's folder name under models/ (default: the latest)")
    evaluation.add_argument("--seeds", type=int, help="episodes per model and task (default: eval.seeds)")
    evaluation.add_argument("--run-id")
    evaluation.set_defaults(func=_eval)
    export = commands.add_parser("export-tasks", parents=[common],
                                 help="write a repository's held-out tasks for Harbor or swebench")
    export.add_argument("repo")
    export.add_argument("--format", choices=["harbor", "swebench"], required=True)
    export.add_argument("--out", type=Path, required=True)
    export.set_defaults(func=_export_tasks)
    trigger = commands.add_parser(
        "trigger", help=f"trigger sera__<repo> on a running Airflow (REST API v2); auth: ${TOKEN_ENV}, or "
                        f"${USERNAME_ENV} and ${PASSWORD_ENV}")
    trigger.add_argument("repo")
    trigger.add_argument("--conf", default="{}", help="run parameters as a JSON object, e.g. '{\"max_functions\": 4}'")
    trigger.add_argument("--wait", action="store_true", help="poll until the run ends; exit 1 unless it succeeded")
    trigger.add_argument("--api-url", default="http://127.0.0.1:8080", help="Airflow API server (default: %(default)s)")
    trigger.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the run (default: 3600)")
    trigger.add_argument("--poll", type=float, default=5.0, help="seconds between state checks (default: 5)")
    trigger.add_argument("--unpause", action="store_true", help="unpause the DAG first if it is paused")
    trigger.set_defaults(func=_trigger)
    pools = commands.add_parser("pools", parents=[common],
                                help="Airflow pools for the model servers (for `airflow pools import`)")
    pools.add_argument("--out", help="write to this file instead of stdout")
    pools.set_defaults(func=_pools)
    stats = commands.add_parser("stats", parents=[common], help="print a run's statistics (JSON)")
    stats.add_argument("repo")
    stats.add_argument("run_id")
    stats.set_defaults(func=_stats)
    curation = commands.add_parser("curate", help="filter and subsample published datasets into a new dataset")
    curation.add_argument("datasets", nargs="+", type=Path, help="dataset directories (t1.jsonl, t2.jsonl, stats.json)")
    curation.add_argument("--out", type=Path, required=True,
                          help="new directory for the curated t1/t2 records and the curation report")
    curation.add_argument("--filter", action="append", default=[], metavar="NAME[=N]",
                          help="long_edit[=40] (changed lines) or user_length[=600] (mean tokens per user turn); "
                               "drops records above N; repeatable, applied in order")
    curation.add_argument("--subsample", metavar="MODE",
                          help="random:N, repo:N (whole repositories until N records) or tokens:BUDGET:N (truncate "
                               "to BUDGET tokens, keep the N that lose least); after the filters")
    curation.add_argument("--seed", type=int, default=0, help="for random and repo (default: 0)")
    curation.add_argument("--tokenizer", type=Path,
                          help="local Hugging Face tokenizer directory (default: a word-piece estimate)")
    curation.set_defaults(func=_curate)
    scrape = commands.add_parser("scrape-issues", parents=[common],
                                 help="a repository's closed issues (PRs excluded, templates removed) as a "
                                      "synth.demo_issues file; token: the platform's github.token, else $GITHUB_TOKEN")
    scrape.add_argument("repo", metavar="OWNER/REPO")
    scrape.add_argument("-n", type=int, default=500, help="at most this many issues, newest first (default: 500)")
    scrape.add_argument("--out", type=Path, required=True, help="JSON file to write (a list of issue texts)")
    scrape.add_argument("--api-url", help="GitHub API (default: the platform's github.api_url or api.github.com)")
    scrape.add_argument("--labels", type=lambda text: [label.strip() for label in text.split(",") if label.strip()],
                        default=[], metavar="A,B", help="only issues carrying all of these labels")
    scrape.set_defaults(func=_scrape_issues)
    push = commands.add_parser("push-dataset", help="upload a run's dataset/ folder to a Hugging Face Hub dataset "
                                                    "repository (token: $HF_TOKEN or `hf auth login`)")
    push.add_argument("dataset", type=Path, metavar="RUN_DATASET_DIR")
    push.add_argument("--repo-id", required=True, metavar="ORG/NAME")
    push.add_argument("--public", action="store_true", help="create the repository public (default: private)")
    push.add_argument("--dry-run", action="store_true", help="list the files and the target; upload nothing")
    push.set_defaults(func=_push_dataset)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Progress logs matter for `run`; the other commands print their own results.
    logging.basicConfig(level=logging.INFO if args.command in ("run", "eval") else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (*USER_ERRORS, AirflowApiError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
