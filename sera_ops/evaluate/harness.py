"""One model's evaluation: an agent episode per held-out task and seed, scored by soft verification.

Episodes run in the data's own harness (mini-swe-agent with the packaged prompts, the bash tool and the repository's
rollout limits, the task given as rollout two's was), so a model is never judged in a format it was not trained on.
The patch is scored against the task's reference by changed-line recall (`verify`); with a test command the tests run
in a fresh container of the task's image with the patch applied. Each (task, seed) result is its own file, so a
cleared or retried evaluation redoes only what is missing; a model whose server does not answer fails, naming the
model and its server, and leaves the results it finished.
"""

from __future__ import annotations

import base64
import logging
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sera_ops.build.images import ImageRef
from sera_ops.evaluate.guide import with_guide
from sera_ops.records import EvalResult, EvalTask
from sera_ops.rollouts.episode import Confinement, EpisodeSpec, EpisodeTeacher, run_episode
from sera_ops.rollouts.sandbox import open_sandbox, trusted_unconfined
from sera_ops.rollouts.teacher import TeacherUnreachable, preflight
from sera_ops.settings import ModelServer, RolloutSettings
from sera_ops.store.io import atomic_write_json, atomic_write_jsonl, read_json
from sera_ops.store.layout import EvalRunFiles, safe_name
from sera_ops.verify import verify

log = logging.getLogger(__name__)


class EvaluationFailed(RuntimeError):
    """A model's evaluation could not finish (its server died, an episode broke); the message names the model."""


@dataclass(frozen=True)
class EvalModel:
    """A model under evaluation: its label in the report and the OpenAI-compatible server that serves it."""

    label: str
    server_name: str
    server: ModelServer
    api_key: str | None = None
    guided: bool = False
    """Whether its tasks start with the repository guide (the zero-training baseline)."""


@dataclass(frozen=True)
class EvalSetup:
    """What every model's episodes share: the data's rollout limits, the seeds, the threshold, the guides."""

    rollout: RolloutSettings
    seeds: list[int]
    threshold: float
    guides: dict[str, str] = field(default_factory=dict)
    """The repository guide per commit, for guided models."""
    confinement: Confinement = Confinement()
    secrets: list[str] = field(default_factory=list)


def evaluate_model(model: EvalModel, tasks: list[EvalTask], files: EvalRunFiles, setup: EvalSetup) -> dict:
    """Every missing (task, seed) episode of `model`, then its results.jsonl and summary.json; the summary."""
    where = f"model '{model.label}' (server '{model.server_name}' at {model.server.base_url})"
    try:
        preflight(model.server_name, model.server, model.api_key)
    except TeacherUnreachable as exc:
        _fail(files, model, f"{where}: {exc}")
    due = [(task, seed) for task in tasks for seed in setup.seeds
           if not files.result(model.label, task.task_id, seed).exists()]
    log.info("%s: %d of %d episodes to run", where, len(due), len(tasks) * len(setup.seeds))
    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=model.server.concurrency * model.server.episodes_per_slot,
                            thread_name_prefix=f"eval-{safe_name(model.label)}-") as pool:
        for outcome in pool.map(lambda item: _attempt(model, *item, files, setup), due):
            if outcome:
                errors.append(outcome)
    if errors:
        _fail(files, model, f"{where}: {len(errors)} of {len(due)} episodes failed; first: {errors[0]}")
    results = [EvalResult.from_dict(read_json(files.result(model.label, task.task_id, seed)))
               for task in tasks for seed in setup.seeds]
    atomic_write_jsonl(files.results(model.label), [result.to_dict() for result in results])
    summary = {"model": model.label, "server": model.server_name, "model_id": model.server.model,
               "guided": model.guided, **summarize(results, setup.seeds)}
    atomic_write_json(files.summary(model.label), summary)
    files.error(model.label).unlink(missing_ok=True)
    return summary


def _fail(files: EvalRunFiles, model: EvalModel, message: str) -> None:
    atomic_write_json(files.error(model.label), {"model": model.label, "server": model.server_name, "error": message})
    raise EvaluationFailed(message)


def _attempt(model: EvalModel, task: EvalTask, seed: int, files: EvalRunFiles, setup: EvalSetup) -> str | None:
    """One episode, its result written; the error's text when it failed (other episodes go on)."""
    try:
        result = run_task(model, task, seed, files, setup)
    except Exception as exc:
        log.error("model %s task %s seed %d: %s", model.label, task.task_id, seed, exc)
        return f"task {task.task_id} seed {seed}: {type(exc).__name__}: {exc}"
    atomic_write_json(files.result(model.label, task.task_id, seed), result.to_dict())
    return None


def run_task(model: EvalModel, task: EvalTask, seed: int, files: EvalRunFiles, setup: EvalSetup) -> EvalResult:
    """One episode of `model` on `task` with `seed`, scored."""
    image = ImageRef.from_dict(task.image)
    guide = setup.guides.get(task.commit) if model.guided else None
    rollout = run_episode(EpisodeSpec(
        instance_id=f"{safe_name(model.label)}.{task.task_id}", stage=0, attempt=seed,
        task=with_guide(guide, task.problem_statement) if guide else task.problem_statement, image=image,
        teacher=EpisodeTeacher(model.server, model.api_key, name=model.server_name), settings=setup.rollout,
        trajectory_path=Path(files.trajectory(model.label, task.task_id, seed)), secrets=setup.secrets,
        confinement=setup.confinement, seed=seed))
    verdict = verify(task.task_id, task.reference_patch, rollout.patch, setup.threshold)
    passed = None
    if task.test_cmd:
        passed = tests_pass(image, rollout.patch, task.test_cmd, setup, trusted_unconfined(model.server),
                            name=f"{safe_name(model.label)}.{task.task_id}-t{seed}")
    return EvalResult(model=model.label, task_id=task.task_id, seed=seed, resolved=verdict.resolved,
                      recall=verdict.recall, threshold=setup.threshold, tests_passed=passed,
                      exit_status=rollout.exit_status, patch=rollout.patch, model_calls=rollout.model_calls,
                      prompt_tokens=rollout.prompt_tokens, completion_tokens=rollout.completion_tokens,
                      cost_usd=rollout.cost_usd, duration_s=rollout.duration_s)


def tests_pass(image: ImageRef, patch: str, test_cmd: str, setup: EvalSetup, trusted: bool, *, name: str) -> bool:
    """Whether `test_cmd` exits 0 in a fresh sandbox of `image` with `patch` applied (a patch that does not apply
    fails). The patch is the model's code, so this sandbox is confined like an episode's."""
    confinement = setup.confinement
    with open_sandbox(image, command_timeout_s=setup.rollout.command_timeout_s, name=name,
                      limits=confinement.limits, time_limit_s=setup.rollout.time_limit_s, run_id=confinement.run_id,
                      allow_unconfined=confinement.allow_unconfined_local or trusted) as sandbox:
        if patch.strip():
            encoded = base64.b64encode(patch.encode()).decode()
            applied = sandbox.run(f"echo {encoded} | base64 -d | git apply --whitespace=nowarn -")
            if applied["returncode"] != 0:
                return False
        return sandbox.run(test_cmd, timeout=int(setup.rollout.command_timeout_s))["returncode"] == 0


def summarize(results: list[EvalResult], seeds: list[int]) -> dict:
    """Resolve rate per seed, its mean and (sample) standard deviation over seeds, and per-episode means."""
    per_seed = {seed: [r.resolved for r in results if r.seed == seed] for seed in seeds}
    by_seed = {seed: sum(runs) / len(runs) for seed, runs in per_seed.items() if runs}
    rates = list(by_seed.values())
    recalls = [r.recall for r in results if r.recall is not None]
    tested = [r.tests_passed for r in results if r.tests_passed is not None]
    episodes = len(results) or 1
    return {
        "tasks": len({r.task_id for r in results}), "seeds": len(seeds), "episodes": len(results),
        "resolved_per_seed": {str(seed): round(rate, 4) for seed, rate in by_seed.items()},
        "resolved_mean": round(statistics.fmean(rates), 4) if rates else None,
        "resolved_std": round(statistics.stdev(rates), 4) if len(rates) > 1 else 0.0,
        "mean_recall": round(statistics.fmean(recalls), 4) if recalls else None,
        "tests_pass_rate": round(sum(tested) / len(tested), 4) if tested else None,
        "tokens_per_task": round(sum(r.prompt_tokens + r.completion_tokens for r in results) / episodes, 1),
        "cost_per_task_usd": round(sum(r.cost_usd for r in results) / episodes, 6),
    }
