"""The end of a run, and the whole run in one process: assemble and publish the dataset; `run_all` without Airflow."""

from __future__ import annotations

import logging

from sera_ops.build.inventory import inventory_from_json
from sera_ops.dataset import assemble as dataset_files
from sera_ops.evaluate.tasks import held_out_patches, write_tasks
from sera_ops.pipeline.batches import make_batches, rollouts
from sera_ops.pipeline.commits import build_image, inventory, mirror, sample, select_commits, usable_commits
from sera_ops.pipeline.context import RunContext, RunFailed
from sera_ops.store.io import read_json

log = logging.getLogger(__name__)


def assemble(ctx: RunContext) -> dict:
    """The dataset and its statistics. A run with no usable commit, no sample, or instances but no record because
    they failed, fails here, naming the stage and the most common error; failures beside records are only counted."""
    ready, failed = usable_commits(ctx)
    if not ctx.store.instances.exists():
        raise RunFailed(f"repo {ctx.spec.name}: no instances were sampled; see the sample_instances task")
    header = {
        "repo": ctx.spec.name, "run_id": ctx.store.run_id, "model_server": ctx.server_name,
        "threshold": ctx.threshold, "format": ctx.spec.postprocess.format,
        "commits": {"selected": len(ready) + len(failed), "ready": len(ready), "failed": failed},
        "functions": sum(len(inventory_from_json(read_json(ctx.store.repo_store.inventory_path(c))))
                         for c in ready),
    }
    if ctx.spec.eval.holds_out:
        header["held_out"] = write_tasks(ctx.store, ctx.spec.eval.test_cmd)
    stats = dataset_files.assemble(ctx.store, ctx.spec.postprocess, header, held_out_patches(ctx.store.repo_store))
    failures = stats["failed"]
    if failures["instances"] and not any(stats["records"].values()):
        error, count = next(iter(failures["by_error"].items()))
        raise RunFailed(f"repo {ctx.spec.name}: no records; {failures['instances']} of {stats['instances']} "
                        f"instance(s) failed, most often ({count}) at {error}")
    return stats


def publish(ctx: RunContext) -> dict | None:
    return dataset_files.publish(ctx.store)


def prepare(ctx: RunContext) -> list[str]:
    """Everything before the rollouts, in one process: commits, mirror, images and inventories (a failing commit is
    logged and left out, as its mapped task would fail alone), the sample and its batches."""
    commits = select_commits(ctx)
    mirror(ctx, commits)
    for commit in commits:
        try:
            build_image(ctx, commit)
            inventory(ctx, commit)
        except Exception:
            log.exception("repo %s commit %s failed; continuing with the others", ctx.spec.name, commit[:12])
    sample(ctx)
    return make_batches(ctx)


def run_all(ctx: RunContext) -> dict:
    """The whole pipeline in one process (what the DAG does, without a scheduler)."""
    for batch_id in prepare(ctx):
        rollouts(ctx, batch_id)
    stats = assemble(ctx)
    publish(ctx)
    return stats
