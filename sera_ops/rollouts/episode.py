"""One agent episode with mini-swe-agent: a task in, a trajectory and a patch out.

An episode ends normally when the agent submits or hits its step, time or format-error limit, or its instance's
cost limit (exit status `cost_limited`); anything else (the
teacher unreachable after the client's retries, a broken sandbox, a work tree the agent made unreadable) raises
EpisodeError, so the instance is retried rather than recorded as finished. The patch is the sandbox's `git diff` after
the episode (also when a limit cut it short), not what the agent chose to print; the trajectory is saved with every
configured secret redacted. The sandbox limits the episode ran into (wall clock, command timeout, memory, processes)
are recorded with the rollout, or named in the error.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sera_ops import prompts
from sera_ops.build.images import ImageRef
from sera_ops.records import Rollout
from sera_ops.redaction import redact
from sera_ops.rollouts.sandbox import SandboxError, open_sandbox, reap_orphans, trusted_unconfined
from sera_ops.rollouts.spend import Budget
from sera_ops.rollouts.teacher import AgentModel
from sera_ops.settings import ModelServer, RolloutSettings, SandboxLimits
from sera_ops.store.io import atomic_write_text

log = logging.getLogger(__name__)

_reaped_runs: set[str] = set()
_reap_lock = threading.Lock()


class EpisodeError(RuntimeError):
    """The episode did not finish on its own terms (teacher unreachable, sandbox broken); retried, not recorded."""


@dataclass(frozen=True)
class EpisodeTeacher:
    """Who drives the agent: a model server (named as in platform.yaml), its key, and the instance's budget."""

    server: ModelServer
    api_key: str | None
    name: str = ""
    budget: Budget | None = None
    """The instance's: every call is charged to it."""


@dataclass(frozen=True)
class Confinement:
    """How the episode's sandbox is confined beyond the platform's defaults."""

    limits: SandboxLimits | None = None
    run_id: str | None = None
    """Labels the episode's container; a process's first episode of a run reaps the run's orphans."""
    allow_unconfined_local: bool = False
    """The platform's `images.allow_unconfined_local`."""


@dataclass(frozen=True)
class EpisodeSpec:
    """One agent episode: which instance and rollout, the task, where it runs, who drives it, and where it is saved."""

    instance_id: str
    stage: int
    attempt: int
    task: str
    image: ImageRef
    teacher: EpisodeTeacher
    settings: RolloutSettings
    trajectory_path: Path
    secrets: list[str] = field(default_factory=list)
    """Redacted from the trajectory, the patch and any error."""
    confinement: Confinement = Confinement()
    template_index: int | None = None
    """Rollout one's template, recorded with the rollout."""
    seed: int | None = None
    """Sent with every model request (OpenAI's `seed`), so that evaluation seeds sample differently."""


def run_episode(spec: EpisodeSpec) -> Rollout:
    """One episode in a fresh sandbox, its trajectory saved (redacted) at `spec.trajectory_path`."""
    from minisweagent.agents.default import DefaultAgent

    settings, teacher, confinement = spec.settings, spec.teacher, spec.confinement
    if confinement.run_id and spec.image.kind == "docker":
        _reap_once(confinement.run_id)

    templates = prompts.agent_templates()
    model = AgentModel(teacher.server, teacher.api_key, temperature=settings.temperature,
                       max_tokens=settings.max_tokens, observation_template=templates["observation_template"],
                       format_error_template=templates["format_error_template"], name=teacher.name,
                       budget=teacher.budget, seed=spec.seed)
    started = time.monotonic()
    error = None
    allow_unconfined = confinement.allow_unconfined_local or trusted_unconfined(teacher.server)
    with open_sandbox(spec.image, command_timeout_s=settings.command_timeout_s,
                      name=f"{spec.instance_id}-r{spec.stage}-a{spec.attempt}", limits=confinement.limits,
                      time_limit_s=settings.time_limit_s, run_id=confinement.run_id,
                      allow_unconfined=allow_unconfined) as sandbox:
        agent = DefaultAgent(model, sandbox.env, system_template=templates["system_template"],
                             instance_template=templates["instance_template"], step_limit=settings.step_limit,
                             cost_limit=0, wall_time_limit_seconds=math.ceil(settings.time_limit_s))
        try:
            agent.run(spec.task)
        except Exception as exc:  # the teacher is unreachable or something broke: not a finished episode
            error = exc
        try:
            patch = sandbox.patch()
        except SandboxError as exc:  # e.g. the agent deleted .git: nothing trustworthy to record
            error, patch = error or exc, ""
        limits_hit = sandbox.limits_hit
    secrets = spec.secrets
    trajectory = redact(agent.serialize({"instance_id": spec.instance_id}), secrets)
    atomic_write_text(spec.trajectory_path, json.dumps(trajectory, indent=1))
    if error is not None:
        hit = f" [limits hit: {'; '.join(limits_hit)}]" if limits_hit else ""
        raise EpisodeError(f"instance {spec.instance_id} rollout {spec.stage}: {type(error).__name__}: "
                           f"{redact(str(error), secrets)}{hit}") from None
    return Rollout(instance_id=spec.instance_id, stage=spec.stage, attempt=spec.attempt,
                   task=redact(spec.task, secrets), exit_status=trajectory["info"]["exit_status"],
                   patch=redact(patch, secrets), model_calls=model.usage.calls,
                   prompt_tokens=model.usage.prompt_tokens, completion_tokens=model.usage.completion_tokens,
                   duration_s=round(time.monotonic() - started, 3), trajectory_file=spec.trajectory_path.name,
                   template_index=spec.template_index, limits_hit=limits_hit, server=teacher.name,
                   cost_usd=round(model.usage.cost_usd, 6))


def _reap_once(run_id: str) -> None:
    """Remove the run's containers left by dead workers, once per run in this process (its first episode)."""
    with _reap_lock:
        if run_id in _reaped_runs:
            return
        _reaped_runs.add(run_id)
    reap_orphans(run_id)
