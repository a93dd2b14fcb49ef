"""The evaluation run of one repository (`sera_eval__<repo>`, `sera eval`): plan the models, evaluate each on the
held-out tasks, then write the report and put its table into the model card and the dataset card.

The plan (`plan.json`) is written once per evaluation run, so a cleared task evaluates the same models on the same
tasks. Each model is its own step (a mapped task in the DAG): a model whose server dies fails alone, naming itself,
and the report lists it as failed beside the others.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sera_ops.build.inventory import inventory_from_json
from sera_ops.errors import PermanentError
from sera_ops.evaluate.guide import repository_guide
from sera_ops.evaluate.harness import EvalModel, EvalSetup, EvaluationFailed, evaluate_model
from sera_ops.evaluate.report import ReportHeader, report_table, update_card, write_report
from sera_ops.pipeline.context import InvalidParam, RunContext, RunFailed
from sera_ops.records import EvalTask
from sera_ops.rollouts.episode import Confinement
from sera_ops.settings import EVAL_MODELS, ModelServer, resolve_secret
from sera_ops.store.io import atomic_write_text, read_json, store_url
from sera_ops.store.layout import MODEL_METRICS, EvalRunFiles, RepoStore

log = logging.getLogger(__name__)


class ModelNotServed(PermanentError, EvaluationFailed):
    """A planned model has no server to evaluate it on: a setting or param to fix, not something a retry heals."""


@dataclass(frozen=True)
class EvalParams:
    """Per-run choices (DAG params / CLI flags); empty or None means "as configured in `eval:`"."""

    models: list[str] = field(default_factory=list)
    """Which of `EVAL_MODELS` to evaluate."""
    model_servers: list[str] = field(default_factory=list)
    """Platform model servers, each evaluated under its own name (a hosted model, another teacher); given without
    `models`, only they are evaluated."""
    student_server: str | None = None
    base_server: str | None = None
    teacher_server: str | None = None
    model_dir: str | None = None
    """The trained model the student, base and cards refer to; None: the latest."""
    seeds: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> EvalParams:
        data = data or {}
        return cls(models=list(data.get("models") or []), model_servers=list(data.get("model_servers") or []),
                   student_server=data.get("student_server") or None, base_server=data.get("base_server") or None,
                   teacher_server=data.get("teacher_server") or None, model_dir=data.get("model_dir") or None,
                   seeds=data.get("seeds") or None)


@dataclass
class EvalContext:
    """One evaluation run: the repository's run context (settings, secrets, store), its params and its files.
    `served`: model servers the caller started for this run (vLLM in Kubernetes), by model label."""

    run: RunContext
    params: EvalParams = field(default_factory=EvalParams)
    served: dict[str, ModelServer] = field(default_factory=dict)

    @property
    def repo(self) -> RepoStore:
        return self.run.store.repo_store

    @property
    def files(self) -> EvalRunFiles:
        return self.repo.evaluation(self.run.store.run_id)

    @property
    def seeds(self) -> list[int]:
        return list(range(self.params.seeds or self.run.spec.eval.seeds))

    def model_dir(self) -> Any:
        if self.params.model_dir:
            return self.repo.model_dir(Path(self.params.model_dir).name)
        return self.repo.latest_model()


def plan(ctx: EvalContext) -> list[str]:
    """The models of this evaluation run (labels), written once to plan.json with their servers. A configured model
    (`eval.models`) that no server serves is left out and reported as not evaluated, so that a scheduled evaluation
    of a repository without a student server still scores the others; asked for by the `models` param, it fails.
    Fails when the repository has no evaluation task or a param names something that is not configured."""
    existing = ctx.run.store.read_json(ctx.files.plan)
    if existing:
        return [entry["label"] for entry in existing["models"]]
    tasks = ctx.repo.tasks()
    spec = ctx.run.spec
    if not tasks:
        raise RunFailed(f"repo {spec.name}: no evaluation tasks in {store_url(ctx.repo.tasks_dir)}; hold some out "
                        f"with 'eval:' in {spec.source_file} and run sera__{spec.name}")
    unknown = sorted(set(ctx.params.models) - set(EVAL_MODELS))
    if unknown:
        raise InvalidParam(f"param 'models': unknown {unknown}; choose from {', '.join(EVAL_MODELS)}")
    model_dir = ctx.model_dir()
    labels = ctx.params.models or ([] if ctx.params.model_servers else spec.eval.models)
    entries = [_entry(ctx, label) for label in labels]
    skipped = []
    if not ctx.params.models:  # configured, not asked for: a model nobody serves is reported, not failed
        skipped = [{"model": e["label"], "server": None, "error": e["problem"], "skipped": True}
                   for e in entries if e["problem"]]
        entries = [e for e in entries if not e["problem"]]
        for entry in skipped:
            log.warning("repo %s: %s is not evaluated: %s", spec.name, entry["model"], entry["error"])
    for name in ctx.params.model_servers:
        _server(ctx, "model_servers", name)
        entries.append({"label": name, "server": name, "guided": False, "problem": None})
    ctx.run.store.write_json(ctx.files.plan, {
        "repo": spec.name, "run_id": ctx.run.store.run_id, "tasks": [task.task_id for task in tasks],
        "seeds": ctx.seeds, "threshold": ctx.run.threshold, "model_dir": model_dir and store_url(model_dir),
        "models": entries, "skipped": skipped, "planned_at": time.time()})
    _write_guides(ctx, tasks)
    return [entry["label"] for entry in entries]


def _entry(ctx: EvalContext, label: str) -> dict:
    """Which server a model label is evaluated on, or the problem that keeps it from being evaluated."""
    settings, params = ctx.run.spec.eval, ctx.params
    names = {"teacher": params.teacher_server or ctx.run.server_names[0],
             "student": params.student_server or settings.student_server,
             "base": params.base_server or settings.base_server}
    names["base+guide"] = names["base"]
    role = "base" if label == "base+guide" else label
    server = names[label] if label not in ctx.served and role not in ctx.served else f"served:{role}"
    problem = None
    if server is None:
        problem = (f"no model server serves the {role} model: set eval.{role}_server in {ctx.run.spec.source_file}"
                   f" or give the '{role}_server' param")
    elif not server.startswith("served:"):
        _server(ctx, f"{role}_server", server)
    if role in ("student", "base") and ctx.model_dir() is None and problem is None and role not in ctx.served:
        log.warning("repo %s: no trained model in %s; the %s server is evaluated as it is", ctx.run.spec.name,
                    store_url(ctx.repo.models_dir), role)
    return {"label": label, "server": server, "guided": label == "base+guide", "problem": problem}


def _server(ctx: EvalContext, param: str, name: str) -> ModelServer:
    try:
        return ctx.run.platform.server(name)
    except ValueError as exc:
        raise InvalidParam(f"param '{param}': {exc}") from None


def _write_guides(ctx: EvalContext, tasks: list[EvalTask]) -> None:
    """The repository guide of each task's commit (the zero-training baseline), once per commit."""
    for commit in sorted({task.commit for task in tasks}):
        target = ctx.repo.guide(commit)
        if target.exists():
            continue
        inventory = ctx.repo.inventory_path(commit)
        functions = inventory_from_json(read_json(inventory)) if inventory.exists() else []
        text = repository_guide(ctx.run.spec.name, ctx.repo.snapshot_dir(commit), functions,
                                ctx.run.spec.eval.test_cmd)
        atomic_write_text(target, text)


def _model(ctx: EvalContext, entry: dict) -> EvalModel:
    server_name = entry["server"]
    if server_name.startswith("served:"):
        role = server_name.split(":", 1)[1]
        return EvalModel(entry["label"], server_name, ctx.served[role], guided=entry["guided"])
    server = ctx.run.platform.server(server_name)
    return EvalModel(entry["label"], server_name, server, resolve_secret(server.api_key, ctx.run.connection_lookup),
                     guided=entry["guided"])


def evaluate(ctx: EvalContext, label: str) -> dict:
    """One model of the plan on every task and seed (see `evaluate.harness`): its summary."""
    recorded = ctx.run.store.read_json(ctx.files.plan)
    entry = next((e for e in recorded["models"] if e["label"] == label), None)
    if entry is None:
        raise InvalidParam(f"model '{label}' is not in this evaluation's plan ({store_url(ctx.files.plan)})")
    if entry["problem"]:
        ctx.run.store.write_json(ctx.files.error(label), {"model": label, "server": None, "error": entry["problem"]})
        raise ModelNotServed(f"model '{label}': {entry['problem']}")
    tasks = [task for task in ctx.repo.tasks() if task.task_id in set(recorded["tasks"])]
    guides = {commit: ctx.repo.guide(commit).read_text(encoding="utf-8") for commit in {t.commit for t in tasks}
              if ctx.repo.guide(commit).exists()}
    spec = ctx.run.spec
    setup = EvalSetup(rollout=spec.rollout, seeds=recorded["seeds"], threshold=recorded["threshold"], guides=guides,
                      confinement=Confinement(limits=spec.sandbox, run_id=f"eval-{ctx.run.store.name}",
                                              allow_unconfined_local=ctx.run.platform.images.allow_unconfined_local),
                      secrets=ctx.run.secrets())
    return evaluate_model(_model(ctx, entry), tasks, ctx.files, setup)


def report(ctx: EvalContext) -> dict:
    """The report of every planned model (failed ones with their error), written beside the results and put into
    the trained model's card and its dataset's card; `evals/latest.json` points at it."""
    recorded = ctx.run.store.read_json(ctx.files.plan)
    if not recorded:
        raise RunFailed(f"no evaluation plan at {store_url(ctx.files.plan)}: the plan task did not finish")
    summaries, failures = [], []
    for entry in recorded["models"]:
        label = entry["label"]
        summary = ctx.run.store.read_json(ctx.files.summary(label))
        error = ctx.run.store.read_json(ctx.files.error(label))
        if summary and not error:
            summaries.append(summary)
        else:
            failures.append(error or {"model": label, "server": entry["server"],
                                      "error": "not evaluated (its task did not finish)"})
    failures += recorded.get("skipped", [])
    header = ReportHeader(repo=ctx.run.spec.name, run_id=ctx.run.store.run_id, model_dir=recorded["model_dir"],
                          tasks=len(recorded["tasks"]), seeds=len(recorded["seeds"]), threshold=recorded["threshold"])
    result = write_report(ctx.files, header, summaries, failures)
    _update_cards(ctx, recorded["model_dir"], report_table(result))
    ctx.run.store.write_json(ctx.repo.latest_evaluation, {"run_id": ctx.run.store.run_id,
                                                          "report": store_url(ctx.files.report),
                                                          "model_dir": recorded["model_dir"], "time": time.time()})
    if not summaries:
        raise RunFailed(f"repo {ctx.run.spec.name}: no model was evaluated; first failure: {failures[0]['error']}")
    return result


def _update_cards(ctx: EvalContext, model_dir: str | None, table: str) -> None:
    if model_dir is None:
        return
    job_name = Path(model_dir).name
    job = ctx.run.store.read_json(ctx.repo.training_job_file(job_name))
    metrics = ctx.run.store.read_json(ctx.repo.model_dir(job_name) / MODEL_METRICS) or {}
    facts = [("repository", ctx.run.spec.name), ("training job", job_name),
             ("dataset run", (job or {}).get("dataset_run_id", "—")), ("method", metrics.get("method", "—")),
             ("base model", f"`{metrics.get('base_model', '—')}`"), ("examples", str(metrics.get("examples", "—"))),
             ("steps", str(metrics.get("steps", "—")))]
    if "first_loss" in metrics:
        facts.append(("loss", f"{metrics['first_loss']:.3f} → {metrics['last_loss']:.3f}"))
    update_card(ctx.repo.model_card(job_name), table, title=f"{ctx.run.spec.name} student ({job_name})", facts=facts)
    if job:
        dataset = ctx.repo.run(job["dataset_run_id"]).dataset
        if dataset.card.exists():
            update_card(dataset.card, table, title=ctx.run.spec.name)


def evaluate_all(ctx: EvalContext) -> dict:
    """The whole evaluation in one process (what the DAG does, without a scheduler): the report."""
    for label in plan(ctx):
        try:
            evaluate(ctx, label)
        except EvaluationFailed as exc:
            log.error("%s", exc)
    return report(ctx)


SERVING_READY_TIMEOUT_S = 2400.0
"""How long the vLLM Deployment may take to load the model (its startup probe allows 30 minutes)."""


def serve_trained_model(ctx: EvalContext) -> dict:
    """The `kubernetes` backend's setup step: serve the model under evaluation with vLLM (`train.serving`) and wait
    until it answers. Returns what the evaluations and the teardown need, as plain data (it travels by XCom): the
    serving plan and the `served` model servers (the student, and for a LoRA adapter its base from the same server)."""
    from sera_ops.train import serving

    model_dir = ctx.model_dir()
    if model_dir is None:
        raise RunFailed(f"repo {ctx.run.spec.name}: no trained model in {store_url(ctx.repo.models_dir)} to serve; "
                        f"run sera_train__{ctx.run.spec.name} first")
    plan = serving.serving_plan_for(ctx.run.platform, ctx.run.spec, model_dir)
    manifests = serving.vllm_manifests(plan)
    serving.apply_manifests(manifests)
    try:
        serving.wait_ready(plan.name, plan.namespace, SERVING_READY_TIMEOUT_S)
    except BaseException:  # the teardown gets no plan from a failed setup: nothing may stay behind on the GPUs
        serving.delete_manifests(manifests)
        raise
    servers = {"student": serving.model_server_for(plan)}
    if plan.lora:
        servers["base"] = serving.model_server_for(plan, "base")
    return {"plan": plan.to_dict(), "servers": servers}


def stop_serving(served: dict | None) -> None:
    """The teardown step: delete what `serve_trained_model` created (nothing when it never got that far)."""
    from sera_ops.train import serving

    if served:
        serving.delete_manifests(serving.vllm_manifests(serving.ServingPlan.from_dict(served["plan"])))


def served_servers(served: dict | None) -> dict[str, ModelServer]:
    """`EvalContext.served` from `serve_trained_model`'s result."""
    return {role: ModelServer.model_validate(server) for role, server in ((served or {}).get("servers") or {}).items()}
