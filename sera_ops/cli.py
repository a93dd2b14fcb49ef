"""`sera`: check the configuration, run one repository without a scheduler, show a run's statistics.

    sera validate                       every config file; exit 1 and one line per problem when any is bad
    sera run tinyledger --max-functions 4 --run-id try-1
    sera stats tinyledger try-1
    sera pools --out pools.json && airflow pools import pools.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

from sera_ops.config import ConfigError, load_platform, load_repos
from sera_ops.pipeline import RunContext, RunParams, run_all
from sera_ops.store import RunStore, atomic_write_text


def _validate(args: argparse.Namespace) -> int:
    platform = load_platform(args.platform)
    specs, errors = load_repos(platform)
    for spec in specs:
        print(f"ok     {spec.dag_id:<32} {spec.source_file}")
    for error in errors:
        print(f"error  {error}")
    return 1 if errors else 0


def _run(args: argparse.Namespace) -> int:
    platform = load_platform(args.platform)
    specs, _ = load_repos(platform)
    spec = next((s for s in specs if s.name == args.repo), None)
    if spec is None:
        known = ", ".join(s.name for s in specs) or "none"
        print(f"unknown repository '{args.repo}' (valid configs: {known}); see `sera validate`", file=sys.stderr)
        return 2
    run_id = args.run_id or f"cli__{datetime.now(UTC):%Y-%m-%dT%H-%M-%S}"
    params = RunParams(commits=args.commit or [], max_functions=args.max_functions, model_server=args.model_server,
                       threshold=args.threshold)
    stats = run_all(RunContext.create(platform, spec, run_id, params))
    print(json.dumps(stats, indent=2))
    print(f"dataset: {stats['dataset_dir']}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    store = RunStore(load_platform(args.platform).storage_root, args.repo, args.run_id)
    path = store.dataset_dir / "stats.json"
    if not path.exists():
        print(f"no statistics at {path}: the run has not been assembled (or the repo/run id is wrong)",
              file=sys.stderr)
        return 2
    print(path.read_text(), end="")
    return 0


def _pools(args: argparse.Namespace) -> int:
    text = json.dumps(load_platform(args.platform).pools(), indent=2) + "\n"
    if args.out:
        atomic_write_text(Path(args.out), text)
    else:
        print(text, end="")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="sera", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    root.add_argument("--platform", help="platform.yaml (default: $SERA_PLATFORM_CONFIG or config/platform.yaml)")
    commands = root.add_subparsers(dest="command", required=True)
    commands.add_parser("validate", help="check platform.yaml and every repository file").set_defaults(func=_validate)
    run = commands.add_parser("run", help="run one repository's pipeline in this process")
    run.add_argument("repo")
    run.add_argument("--run-id")
    run.add_argument("--commit", action="append", help="commit to use (repeatable)")
    run.add_argument("--max-functions", type=int)
    run.add_argument("--model-server")
    run.add_argument("--threshold", type=float)
    run.set_defaults(func=_run)
    pools = commands.add_parser("pools", help="Airflow pools for the model servers (for `airflow pools import`)")
    pools.add_argument("--out", help="write to this file instead of stdout")
    pools.set_defaults(func=_pools)
    stats = commands.add_parser("stats", help="print a run's stats.json")
    stats.add_argument("repo")
    stats.add_argument("run_id")
    stats.set_defaults(func=_stats)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
