"""The stages in order, as idempotent steps over the run store: what the DAG's tasks call, and `sera run` in a loop.

`context` holds a run's settings, parameters and secrets (`RunContext`); `commits` selects commits, mirrors them and
builds each commit's image and inventory, then samples the instances; `planner` and `batches` split the instances into
batches and take each instance through rollout one, synthesis, rollout two and verification; `run` assembles and
publishes the dataset, or runs everything in one process (`run_all`). Every step skips work whose output exists, so
Airflow retries and cleared tasks replace SERA's manual stage resumes.
"""

from sera_ops.pipeline.batches import (
    batches_on,
    make_batches,
    rollout_one,
    rollout_two,
    rollouts,
    synthesize,
    verify_batch,
)
from sera_ops.pipeline.commits import (
    build_image,
    inventory,
    mirror,
    ready_commits,
    sample,
    select_commits,
    usable_commits,
)
from sera_ops.pipeline.context import BatchFailed, InvalidParam, RunContext, RunFailed, RunParams, SourceUnreachable
from sera_ops.pipeline.run import assemble, prepare, publish, run_all

__all__ = [
    "BatchFailed", "InvalidParam", "RunContext", "RunFailed", "RunParams", "SourceUnreachable", "assemble",
    "batches_on", "build_image", "inventory", "make_batches", "mirror", "prepare", "publish", "ready_commits",
    "rollout_one", "rollout_two", "rollouts", "run_all", "sample", "select_commits", "synthesize", "usable_commits",
    "verify_batch",
]
