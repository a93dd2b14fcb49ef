"""How much the pipeline costs on top of the episodes themselves, and how busy it keeps the teacher.

The same N instances of the bundled sample, with the scripted teacher answering after a fixed latency (a stand-in
for a model's response time), three ways at the same concurrency on the same sandboxes:
- `plain loop` (the baseline): a thread pool that runs, for each instance, exactly the model calls and
  mini-swe-agent episodes SERA makes (rollout one, judge, PR writer, rollout two) and nothing else: no run store,
  no claims, no records;
- `stage by stage`: the pipeline's stages one after another over the batch, each waiting for the slowest instance
  (what a DAG with one task per stage does);
- `DAG batch task`: the repository DAG under `dag.test()`, whose batch task takes each instance through all stages
  with no barrier between them; its time is the batch task's own (from the task instance).
`overhead_ratio` = the DAG batch task's seconds per model call / the plain loop's (target ≤ 1.10; per call, because
the pipeline collapses duplicate patches and so makes fewer calls for the same instances); `saturation` = mean
requests in flight at the teacher during the batch task / concurrency (target ≥ 0.95).

    python bench/rollouts.py [--instances 64] [--concurrency 8] [--latency 0.2] [--sandbox local|docker]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]
_SCRATCH = Path(tempfile.mkdtemp(prefix="sera-bench-rollouts-"))
os.environ.update({"AIRFLOW_HOME": str(_SCRATCH / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                   "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
                   "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
                   "MSWEA_GLOBAL_CONFIG_DIR": str(_SCRATCH / "mswea"), "MSWEA_SILENT_STARTUP": "1",
                   "MSWEA_CONFIGURED": "true"})

import yaml  # noqa: E402

from sera_ops import pipeline, prompts  # noqa: E402
from sera_ops.build.images import ImageRef  # noqa: E402
from sera_ops.pipeline.context import RunContext, RunParams  # noqa: E402
from sera_ops.records import Instance  # noqa: E402
from sera_ops.rollouts.episode import EpisodeSpec, EpisodeTeacher, run_episode  # noqa: E402
from sera_ops.rollouts.teacher import TeacherClient  # noqa: E402
from sera_ops.settings import load_platform, load_repos  # noqa: E402
from sera_ops.store.io import read_json  # noqa: E402
from sera_ops.synth import judge, writer
from sera_ops.testing.dry_run import dry_run_platform  # noqa: E402
from sera_ops.testing.scripted_teacher import ScriptedTeacher, ScriptedTeacherConfig  # noqa: E402


def platform_for(work: Path, teacher_url: str, args: argparse.Namespace) -> Path:
    """The embedded default, with one batch of all the instances at the given concurrency."""
    repos = work / "repos"
    repos.mkdir(parents=True)
    spec = yaml.safe_load((ROOT / "config" / "repos" / "tinyledger.yaml").read_text())
    spec.pop("training", None)
    spec["batching"] = {"batch_size": args.instances}
    (repos / "tinyledger.yaml").write_text(yaml.safe_dump(spec))
    platform = dry_run_platform(ROOT / "config" / "platform.yaml", work, teacher_url, storage_root=work / "store",
                                repos_dir=repos, overrides={"images": {"sandbox": args.sandbox},
                                                            "defaults": {"retries": 0, "retry_delay_s": 0}})
    data = yaml.safe_load(platform.read_text())
    data["model_servers"]["scripted"].update(concurrency=args.concurrency, parallel_batches=1,
                                             episodes_per_slot=args.episodes_per_slot)
    platform.write_text(yaml.safe_dump(data))
    return platform


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs so far (/proc/stat): how busy the machine was between two readings."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def dag_batch_task(work: Path, teacher: ScriptedTeacher, args: argparse.Namespace
                   ) -> tuple[float, float, float, Path]:
    """(batch task seconds, mean in flight during it, CPU busy fraction, platform file) of one `dag.test()` run."""
    import subprocess

    from sera_airflow import run_dag_locally

    platform = platform_for(work, teacher.url, args)
    os.environ["SERA_PLATFORM_CONFIG"] = str(platform)
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True, capture_output=True)
    teacher.in_flight.reset()
    busy, total = cpu_ticks()
    run = run_dag_locally("sera__tinyledger", {"max_functions": args.instances})
    busy_after, total_after = cpu_ticks()
    batch = [ti for ti in run.get_task_instances() if ti.task_id.endswith("rollouts")]
    if str(run.state) != "success" or len(batch) != 1:
        sys.exit(f"the DAG run ended {run.state} with batch tasks {[ti.task_id for ti in batch]}")
    seconds = (batch[0].end_date - batch[0].start_date).total_seconds()
    return seconds, teacher.in_flight.mean(), (busy_after - busy) / max(total_after - total, 1), platform


def run_context(platform: Path, run_id: str, instances: int) -> RunContext:
    config = load_platform(platform)
    return RunContext.create(config, load_repos(config)[0][0], run_id, RunParams(max_functions=instances))


def stage_by_stage(platform: Path, instances: int) -> float:
    ctx = run_context(platform, "stage-by-stage", instances)
    (batch,) = pipeline.prepare(ctx)
    started = time.perf_counter()
    for stage in (pipeline.rollout_one, pipeline.synthesize, pipeline.rollout_two, pipeline.verify_batch):
        stage(ctx, batch)
    return time.perf_counter() - started


def plain_loop(platform: Path, work: Path, instances: int, workers: int) -> float:
    """The same model calls and episodes, with nothing around them: the floor the pipeline is measured against."""
    ctx = run_context(platform, "plain-loop", instances)
    pipeline.prepare(ctx)
    chosen = [Instance.from_dict(record) for record in ctx.store.instance_records()]
    images = {i.commit: ImageRef.from_dict(read_json(ctx.store.image(i.commit))) for i in chosen}
    common = {"teacher": EpisodeTeacher(ctx.server, ctx.api_key()), "settings": ctx.spec.rollout}

    def one(instance: Instance) -> None:
        client = TeacherClient(ctx.server, ctx.api_key())
        folder = work / "plain" / instance.instance_id
        template = writer.pick_distinct(prompts.ROLLOUT_ONE_COUNT, ctx.spec.seed, instance.instance_id, "template",
                                       attempt=0)  # the pipeline's first pick: the same episodes on both sides
        task = prompts.render_rollout_one(template, instance.start_fn, instance.start_fn_file)
        first = run_episode(EpisodeSpec(instance_id=instance.instance_id, stage=1, attempt=0, task=task,
                                        image=images[instance.commit], trajectory_path=folder / "one.json", **common))
        steps = judge.agent_steps(read_json(folder / "one.json"), ctx.spec.synth.observation_chars)
        judge.judge_patch(client, ctx.spec.synth, task, steps, first.patch)
        pr = writer.write_synthetic_pr(client, ctx.spec.synth, instance.instance_id, steps, first.patch,
                                      writer.demo_pool(ctx.spec.synth), 0).synth_pr
        run_episode(EpisodeSpec(instance_id=instance.instance_id, stage=2, attempt=0, task=pr or task,
                                image=images[instance.commit], trajectory_path=folder / "two.json", **common))

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, chosen))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.2, help="teacher latency per call, seconds")
    parser.add_argument("--episodes-per-slot", type=int, default=2)
    parser.add_argument("--sandbox", default="local", choices=["local", "docker"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    calls = []

    def counted(run, *run_args):
        """Run one side and note how many model calls it made (agent, judge, writer)."""
        before = sum(teacher.stats[kind] for kind in ("agent", "judge", "writer"))
        result = run(*run_args)
        calls.append(sum(teacher.stats[kind] for kind in ("agent", "judge", "writer")) - before)
        return result

    with ScriptedTeacher(ScriptedTeacherConfig(latency_s=args.latency)) as teacher:
        dag_s, in_flight, cpu_busy, platform = counted(dag_batch_task, _SCRATCH / "dag", teacher, args)
        staged_s = counted(stage_by_stage, platform, args.instances)
        plain_s = counted(plain_loop, platform, _SCRATCH, args.instances, args.concurrency * args.episodes_per_slot)
    print(f"{args.instances} instances of the bundled sample, {args.concurrency} request slots and "
          f"{args.concurrency * args.episodes_per_slot} episodes at once, {args.sandbox} sandbox, teacher latency "
          f"{args.latency} s/call")
    print("| way | wall s | model calls | s per 100 calls | vs plain loop |")
    print("|---|---:|---:|---:|---:|")
    for label, seconds, made in (("plain loop (baseline)", plain_s, calls[2]),
                                 ("stage by stage (a barrier per stage)", staged_s, calls[1]),
                                 ("DAG batch task (no barrier)", dag_s, calls[0])):
        print(f"| {label} | {seconds:.1f} | {made} | {100 * seconds / made:.1f} | {seconds / plain_s:.2f}x |")
    print(f"mean requests in flight during the batch task: {in_flight:.2f} of {args.concurrency}; CPU busy during the "
          f"DAG run: {cpu_busy:.0%} of {os.cpu_count()} cores")
    # The pipeline skips the writer and rollout two of duplicate patches, so it makes fewer calls than the plain loop:
    # the overhead is compared per model call.
    print(f"overhead_ratio={(dag_s / calls[0]) / (plain_s / calls[2]):.2f} "
          f"saturation={in_flight / args.concurrency:.2f}")


if __name__ == "__main__":
    main()
