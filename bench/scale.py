"""How many task instances one DAG run creates at SERA scale, and how long the DAG file takes to parse.

Plans 10,000 and 50,000 instances with the batch planner (the repository's batching settings and its model server's
concurrency) and counts the task instances the repository DAG would create: its plain tasks once, the per-commit
tasks once per commit, the per-batch tasks once per batch. Target P6: ≤ 300 task instances for 10,000 instances;
Airflow refuses to map more than `max_map_length` (1024) of any task.

    python bench/scale.py [--commits 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="sera-bench-scale-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

from sera_ops.pipeline.planner import plan_batches  # noqa: E402
from sera_ops.records import Instance  # noqa: E402
from sera_ops.settings import load_platform, load_repos  # noqa: E402

DAG_FILE = ROOT / "dags" / "sera_repos.py"
MAX_MAP_LENGTH = 1024


def parse_seconds(repeats: int = 5) -> tuple[float, object]:
    """Median time to parse the DAG file as the dag-processor does, and the repository DAG it made."""
    from airflow.dag_processing.dagbag import DagBag

    times, bag = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        bag = DagBag(dag_folder=str(DAG_FILE))
        times.append(time.perf_counter() - started)
    return statistics.median(times), bag.dags["sera__tinyledger"]


def task_instances(dag, commits: int, batches: int) -> tuple[int, int]:
    """(task instances, largest map) of one run: mapped groups' tasks times their map length. The batch groups
    (`per_batch`, or one `per_batch_<server>` per model server) share the run's batches, counted as an even spread."""
    groups = [task.task_group.group_id if task.task_group else None for task in dag.tasks]
    lanes = {group for group in groups if group and group.startswith("per_batch")}
    total = widest = 0
    for group in groups:
        length = commits if group == "per_commit" else -(-batches // len(lanes)) if group in lanes else 1
        total += length
        widest = max(widest, length)
    return total, widest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=5, help="commits per run (SERA's n_commits default: 5)")
    args = parser.parse_args()
    platform = load_platform()
    spec = next(s for s in load_repos(platform)[0] if s.name == "tinyledger")
    server = platform.server(spec.model_server)
    episodes = server.concurrency * server.episodes_per_slot
    seconds, dag = parse_seconds()
    rows = []
    for count in (1_000, 10_000, 50_000):
        sampled = [Instance(f"r_{n % args.commits}_{n}", "r", f"c{n % args.commits}", "f", "m.py", 0)
                   for n in range(count)]
        batches = plan_batches(sampled, spec.batching.batch_size, spec.batching.max_batches, episodes)
        total, widest = task_instances(dag, args.commits, len(batches))
        rows.append((count, len(batches), len(next(iter(batches.values()))), total, widest))
    print(f"repository DAG sera__tinyledger ({len(dag.tasks)} tasks), {args.commits} commits, batch_size "
          f"{spec.batching.batch_size}, max_batches {spec.batching.max_batches}, {episodes} episodes per batch task; "
          f"DAG file parse {seconds * 1000:.0f} ms (median of 5)")
    print("| instances | batches | instances per batch | task instances | largest map (limit 1024) |")
    print("|---:|---:|---:|---:|---:|")
    for count, batches, size, total, widest in rows:
        print(f"| {count:,} | {batches} | {size} | {total} | {widest} |")
    assert all(widest <= MAX_MAP_LENGTH for *_, widest in rows)
    print(f"task_instances_10k={rows[1][3]}")


if __name__ == "__main__":
    main()
