"""One training DAG per repository whose file has a `training:` section (dag_id `sera_train__<name>`), scheduled on
the repository's dataset Asset: every published dataset triggers a fine-tuning run. Wiring only.

    prepare_job (resolve the dataset, record the job) ─► train (in-process `local` backend, or a Kubernetes pod that
                                                               runs `accelerate launch` with one process per GPU)
                                                               ─► the model Asset (sera_eval__<name> runs on it)
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task
from sera_airflow import START, dataset_asset, default_args, fail_fast, model_asset, storage_root, training_pod

from sera_ops.settings import PlatformConfig, RepoSpec, load_platform, load_repos


def build_training_dag(platform: PlatformConfig, spec: RepoSpec):
    settings = spec.training
    backend = platform.training.backend
    if backend == "kubernetes":  # the pod runs one training process per GPU
        backend = f"kubernetes, {platform.training.kubernetes.gpus} GPU {settings.distributed}"

    @dag(dag_id=f"sera_train__{spec.name}", schedule=[dataset_asset(spec)], start_date=START,
         catchup=False, max_active_runs=1, default_args=default_args(platform, spec.owner),
         tags=sorted({*platform.defaults.tags, *spec.tags, "training"}), render_template_as_native_obj=True,
         description=f"Fine-tune on {spec.name}'s latest dataset ({settings.method}, {backend})",
         params={
             "dataset_dir": Param(None, type=["null", "string"],
                                  description="A run's dataset directory; empty = the latest published dataset."),
             "method": Param(settings.method, type="string", enum=["lora", "full"]),
             "max_steps": Param(settings.max_steps, type=["null", "integer"], minimum=1,
                                description="Stop after this many optimizer steps (smoke runs)."),
         })
    def training_dag():
        @task
        @fail_fast
        def prepare_job() -> dict:
            from sera_ops.train.jobs import prepare_job as prepare

            context = get_current_context()
            params = context["params"]
            run_settings = settings.model_copy(update={"method": params["method"], "max_steps": params["max_steps"]})
            job = prepare(storage_root(platform), spec.name, context["run_id"], run_settings.model_dump(mode="json"),
                          run_settings.datasets, params["dataset_dir"])
            return {**job.to_dict(), "arguments": job.arguments()}

        job = prepare_job()
        if platform.training.backend == "kubernetes":
            job >> training_pod(platform, spec, arguments="{{ ti.xcom_pull(task_ids='prepare_job')['arguments'] }}",
                                outlets=[model_asset(spec)])
        else:
            @task(outlets=[model_asset(spec)])
            @fail_fast
            def train(job: dict) -> dict:
                from sera_ops.train.jobs import TrainJob, run_locally

                return run_locally(TrainJob.from_dict({k: v for k, v in job.items() if k != "arguments"}),
                                   storage_root(platform))

            train(job)

    return training_dag()


_platform = load_platform()
for _spec in load_repos(_platform)[0]:
    if _spec.training is not None:
        build_training_dag(_platform, _spec)
