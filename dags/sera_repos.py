"""One DAG per repository file in config/repos/ (dag_id `sera__<name>`). Wiring only: each task is one call into
sera_ops.pipeline, which reads and writes the run store, so tasks are idempotent and safe to retry or clear. Every
task body is wrapped in `fail_fast`: an error retrying cannot fix fails its task at once, a transient one is retried.

    select_commits ─► mirror (to the GitHub organisation; skipped when not configured)
                   ─► per commit: build_image ─► inventory ─► sample_instances ─► make_batches
        ─► per batch: rollouts ─► assemble ─► publish (dataset Asset)
           (several model_servers: batches_<server> ─► per_batch_<server> for each, in that server's pool)

A batch task takes each of its instances through rollout one (judged), the synthetic PR, rollout two and verification
with no barrier between stages, so the teacher stays busy; batches are sized by `sera_ops.pipeline.planner` so that a
run of 50,000 instances still maps at most `batching.max_batches` of them.
"""

from __future__ import annotations

import logging

from airflow.sdk import Param, dag, get_current_context, task, task_group
from airflow.sdk.exceptions import AirflowSkipException
from sera_airflow import START, connection_secret, dataset_asset, default_args, fail_fast, storage_root

from sera_ops.settings import ConfigError, PlatformConfig, RepoSpec, load_platform, load_repos, pool_name

log = logging.getLogger(__name__)


def _context(platform: PlatformConfig, spec: RepoSpec):
    from sera_ops.pipeline.context import RunContext, RunParams

    context = get_current_context()
    return RunContext.create(platform, spec, context["run_id"], RunParams.from_dict(context["params"]),
                             connection_lookup=connection_secret, storage_root=storage_root(platform))


def _params(platform: PlatformConfig, spec: RepoSpec) -> dict[str, Param]:
    return {
        "commits": Param([], type="array", items={"type": "string", "pattern": r"^[\w./-]{1,200}$"},
                         description="Commits (hashes, tags or branches) to use instead of the configured selection."),
        "max_functions": Param(None, type=["null", "integer"], minimum=1,
                               description=f"Start functions to sample (configured: {spec.fns_per_repo})."),
        "model_server": Param(None, type=["null", "string"], enum=[None, *sorted(platform.model_servers)],
                              description="One teacher model server for all rollouts and LLM calls (configured: "
                                          f"{', '.join(spec.model_servers)})."),
        "model_servers": Param([], type="array", items={"type": "string", "enum": sorted(platform.model_servers)},
                               uniqueItems=True, description="Teacher model servers to spread the batches over "
                                                             "instead of the configured ones."),
        "threshold": Param(spec.verify.threshold, type="number", minimum=0, maximum=1,
                           description="Soft-verification threshold: 1 hard, 0<t<1 soft, 0 none."),
        "incremental": Param(None, type=["null", "boolean"],
                             description="Skip commits and functions earlier runs covered (default: on for "
                                         "scheduled repositories)."),
    }


def build_repo_dag(platform: PlatformConfig, spec: RepoSpec):
    from sera_ops import pipeline

    @dag(dag_id=spec.dag_id, schedule=spec.schedule, start_date=START, catchup=False, max_active_runs=1,
         default_args=default_args(platform, spec.owner), params=_params(platform, spec),
         tags=sorted({*platform.defaults.tags, *spec.tags, "repo"}),
         description=spec.description or f"SERA data generation for {spec.source}",
         doc_md=f"SERA pipeline for **{spec.name}** (`{spec.source}`), configured in `{spec.source_file}`.")
    def repo_dag():
        @task
        @fail_fast
        def select_commits() -> list[str]:
            return pipeline.select_commits(_context(platform, spec))

        @task
        @fail_fast
        def mirror(commits: list[str]) -> dict:
            result = pipeline.mirror(_context(platform, spec), commits)
            if result is None:
                raise AirflowSkipException("mirroring is off: platform.yaml has no 'github:' section")
            return result

        @task_group
        def per_commit(commit: str):
            @task
            @fail_fast
            def build_image(commit: str) -> str:
                pipeline.build_image(_context(platform, spec), commit)
                return commit

            @task
            @fail_fast
            def inventory(commit: str) -> dict:
                return pipeline.inventory(_context(platform, spec), commit)

            return inventory(build_image(commit))

        @task(trigger_rule="all_done")
        @fail_fast
        def sample_instances(_: object) -> int:
            return pipeline.sample(_context(platform, spec))

        @task
        @fail_fast
        def make_batches(_: int) -> list[str]:
            return pipeline.make_batches(_context(platform, spec))

        def per_batch(group_id: str, server: str):
            @task_group(group_id=group_id)
            def batch_group(batch_id: str):
                @task(pool=pool_name(server))
                @fail_fast
                def rollouts(batch_id: str) -> dict:
                    return pipeline.rollouts(_context(platform, spec), batch_id)

                return rollouts(batch_id)

            return batch_group

        def batches_on(server: str):
            @task(task_id=f"batches_{server}")
            @fail_fast
            def select(_: list[str]) -> list[str]:
                return pipeline.batches_on(_context(platform, spec), server)

            return select

        @task(trigger_rule="all_done")
        @fail_fast
        def assemble(_: object) -> dict:
            stats = pipeline.assemble(_context(platform, spec))
            return {key: stats[key] for key in ("instances", "judged_good", "verified", "failed", "not_started",
                                                "cost_usd", "records", "dataset_dir")}

        @task(outlets=[dataset_asset(spec)])
        @fail_fast
        def publish(_: dict) -> dict:
            pointer = pipeline.publish(_context(platform, spec))
            if pointer is None:
                raise AirflowSkipException("the run produced no records; nothing published")
            return pointer

        commits = select_commits()
        mirror(commits)
        batches = make_batches(sample_instances(per_commit.expand(commit=commits)))
        if len(spec.model_servers) == 1:
            done = [per_batch("per_batch", spec.model_server).expand(batch_id=batches)]
        else:  # a pool is fixed per task, so one batch group per server, each mapped over that server's batches
            done = [per_batch(f"per_batch_{server}", server).expand(batch_id=batches_on(server)(batches))
                    for server in spec.model_servers]
        publish(assemble(done))

    return repo_dag()


def build_config_error_dag(error: ConfigError, platform: PlatformConfig):
    """A visible stand-in for a repository file that does not validate: its one task fails with the error."""
    name = error.file.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name.lower())

    @dag(dag_id=f"sera__{safe}", schedule=None, start_date=START, catchup=False,
         default_args=default_args(platform, platform.defaults.owner),
         tags=sorted({*platform.defaults.tags, "config-error"}),
         description=f"CONFIG ERROR: {error}", doc_md=f"**This repository file does not validate.**\n\n`{error}`")
    def broken_repo_dag():
        @task
        @fail_fast
        def config_error() -> None:
            raise error

        config_error()

    return broken_repo_dag()


_platform = load_platform()
_specs, _errors = load_repos(_platform)
for _spec in _specs:
    build_repo_dag(_platform, _spec)
for _error in _errors:
    log.error("repository config rejected: %s", _error)
    build_config_error_dag(_error, _platform)
