"""One evaluation DAG per repository that holds tasks out (`eval:` in its file; dag_id `sera_eval__<name>`),
scheduled on the repository's trained-model Asset when it has a `training:` section, and triggerable for any model
server. Wiring only: each task is one call into sera_ops.pipeline.evaluation.

    [serve_student ─►] plan (models and tasks, once per run) ─► per model: evaluate (mapped: a model whose server
        dies fails alone) ─► report (all_done: the table, the model card and the dataset card's evaluation section)
        [─► stop_serving]

With the `kubernetes` training backend the trained model is served for the run by vLLM (`serve_student`, a setup
task, before the evaluations; `stop_serving`, its teardown, after them whatever happened: sera_ops.train.serving);
with `local` it is evaluated on `eval.student_server`.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, setup, task, teardown
from sera_airflow import START, connection_secret, default_args, fail_fast, model_asset, storage_root

from sera_ops.settings import EVAL_MODELS, PlatformConfig, RepoSpec, load_platform, load_repos


def _context(platform: PlatformConfig, spec: RepoSpec, served: dict | None = None):
    from sera_ops.pipeline.context import RunContext, RunParams
    from sera_ops.pipeline.evaluation import EvalContext, EvalParams, served_servers

    context = get_current_context()
    run = RunContext.create(platform, spec, context["run_id"], RunParams(), connection_lookup=connection_secret,
                            storage_root=storage_root(platform))
    return EvalContext(run, EvalParams.from_dict(context["params"]), served_servers(served))


def _params(platform: PlatformConfig, spec: RepoSpec) -> dict[str, Param]:
    servers = sorted(platform.model_servers)
    one_server = {"type": ["null", "string"], "enum": [None, *servers]}
    settings = spec.eval
    return {
        "models": Param([], type="array", items={"type": "string", "enum": list(EVAL_MODELS)}, uniqueItems=True,
                        description=f"Which models to compare (configured: {', '.join(settings.models)})."),
        "model_servers": Param([], type="array", items={"type": "string", "enum": servers}, uniqueItems=True,
                               description="Further model servers, each evaluated under its own name."),
        "teacher_server": Param(None, **one_server, description="The teacher's server (default: the "
                                                                 "repository's)."),
        "student_server": Param(None, **one_server, description="The server serving the trained model "
                                                                 f"(configured: {settings.student_server})."),
        "base_server": Param(None, **one_server, description="The server serving the base model "
                                                              f"(configured: {settings.base_server})."),
        "seeds": Param(None, type=["null", "integer"], minimum=1, maximum=20,
                       description=f"Episodes per model and task (configured: {settings.seeds})."),
        "model_dir": Param(None, type=["null", "string"], description="A trained model's folder name under "
                                                                       "models/; empty: the latest."),
    }


def build_eval_dag(platform: PlatformConfig, spec: RepoSpec):
    from sera_ops.pipeline import evaluation

    serves_with_vllm = bool(spec.training) and platform.training.backend == "kubernetes"

    @dag(dag_id=f"sera_eval__{spec.name}", schedule=[model_asset(spec)] if spec.training else None,
         start_date=START, catchup=False, max_active_runs=1, default_args=default_args(platform, spec.owner),
         params=_params(platform, spec), tags=sorted({*platform.defaults.tags, *spec.tags, "evaluation"}),
         description=f"Evaluate models on {spec.name}'s held-out tasks",
         doc_md=f"Base, student and teacher on **{spec.name}**'s held-out tasks (`eval:` in `{spec.source_file}`).")
    def eval_dag():
        @task
        @fail_fast
        def plan(served: dict | None) -> list[str]:
            return evaluation.plan(_context(platform, spec, served))

        @task(map_index_template="{{ label }}")
        @fail_fast
        def evaluate(label: str, served: dict | None) -> dict:
            get_current_context()["label"] = label  # names the mapped task instance after its model
            return evaluation.evaluate(_context(platform, spec, served), label)

        @task(trigger_rule="all_done")
        @fail_fast
        def report(_: object) -> dict:
            result = evaluation.report(_context(platform, spec))
            return {"models": {s["model"]: s["resolved_mean"] for s in result["models"]},
                    "failed": [f["model"] for f in result["failed"]], "tasks": result["tasks"]}

        if serves_with_vllm:
            @setup
            @task
            @fail_fast
            def serve_student() -> dict:
                return evaluation.serve_trained_model(_context(platform, spec))

            @teardown(on_failure_fail_dagrun=True)  # a pod left on the GPUs must show
            @task
            def stop_serving(served: dict | None) -> None:
                evaluation.stop_serving(served)

            served = serve_student()
            evaluated = evaluate.partial(served=served).expand(label=plan(served))
            evaluated >> stop_serving(served)
        else:
            evaluated = evaluate.partial(served=None).expand(label=plan(None))
        report(evaluated)

    return eval_dag()


_platform = load_platform()
for _spec in load_repos(_platform)[0]:
    if _spec.eval.holds_out:
        build_eval_dag(_platform, _spec)
