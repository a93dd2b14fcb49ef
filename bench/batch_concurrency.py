"""Rollout throughput of one batch task against the model server's concurrency (the batch thread pool).

Runs rollout one + synthesize + rollout two + verify for one batch of the bundled sample, with the scripted teacher
answering after a fixed latency (a stand-in for a real model's response time), at concurrency 1 (the baseline: one
episode at a time, as one Airflow task per instance would be per worker slot) and higher. Prints a table; the ratio
column is the speed-up against the baseline run side by side in the same process.

    python bench/batch_concurrency.py [--instances 8] [--latency 0.2] [--sandbox local|docker]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sera_ops import pipeline  # noqa: E402
from sera_ops.pipeline.context import RunContext, RunParams  # noqa: E402
from sera_ops.settings import load_platform, load_repos  # noqa: E402
from sera_ops.testing.dry_run import dry_run_platform  # noqa: E402
from sera_ops.testing.scripted_teacher import ScriptedTeacher, ScriptedTeacherConfig  # noqa: E402


def one_batch(work: Path, teacher_url: str, concurrency: int, instances: int, sandbox: str) -> float:
    platform_file = dry_run_platform(ROOT / "config" / "platform.yaml", work, teacher_url,
                                     storage_root=work / "store", overrides={"images": {"sandbox": sandbox}})
    platform = load_platform(platform_file)
    platform.model_servers["scripted"] = platform.model_servers["scripted"].model_copy(
        update={"concurrency": concurrency})
    spec = load_repos(platform)[0][0]
    spec = spec.model_copy(update={"batching": spec.batching.model_copy(update={"batch_size": instances})})
    ctx = RunContext.create(platform, spec, f"bench-c{concurrency}", RunParams(max_functions=instances))
    (batch,) = pipeline.prepare(ctx)
    started = time.perf_counter()
    pipeline.rollouts(ctx, batch)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.2, help="teacher latency per call, seconds")
    parser.add_argument("--sandbox", default="local", choices=["local", "docker"])
    parser.add_argument("--concurrency", default="1,2,4,8")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with ScriptedTeacher(ScriptedTeacherConfig(latency_s=args.latency)) as teacher, \
            tempfile.TemporaryDirectory(prefix="sera-bench-") as scratch:
        for level in (int(c) for c in args.concurrency.split(",")):
            rows.append((level, one_batch(Path(scratch) / f"c{level}", teacher.url, level, args.instances,
                                          args.sandbox)))
    baseline = rows[0][1]
    print(f"batch of {args.instances} instances, {args.sandbox} sandbox, teacher latency {args.latency} s/call")
    print("| concurrency | wall s | instances/min | speed-up vs concurrency 1 |")
    print("|---:|---:|---:|---:|")
    for level, seconds in rows:
        print(f"| {level} | {seconds:.1f} | {args.instances / seconds * 60:.0f} | {baseline / seconds:.2f}x |")


if __name__ == "__main__":
    main()
