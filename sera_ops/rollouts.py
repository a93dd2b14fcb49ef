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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sera_ops import prompts
from sera_ops.config import ModelServer, RolloutSettings, SandboxLimits
from sera_ops.images import ImageRef
from sera_ops.redaction import redact
from sera_ops.sandbox import SandboxError, open_sandbox, reap_orphans, trusted_unconfined
from sera_ops.store import atomic_write_text
from sera_ops.teachers import COST_LIMITED, AgentModel, Budget

log = logging.getLogger(__name__)

_reaped_runs: set[str] = set()
_reap_lock = threading.Lock()


class EpisodeError(RuntimeError):
    """The episode did not finish on its own terms (teacher unreachable, sandbox broken); retried, not recorded."""


@dataclass(frozen=True)
class Rollout:
    instance_id: str
    stage: int
    attempt: int
    task: str
    exit_status: str
    patch: str
    model_calls: int
    prompt_tokens: int
    completion_tokens: int
    duration_s: float
    trajectory_file: str
    template_index: int | None = None
    limits_hit: list[str] = field(default_factory=list)
    server: str = ""
    """The agent's model server (its name in platform.yaml)."""
    cost_usd: float = 0.0

    @property
    def submitted(self) -> bool:
        return self.exit_status.lower() == "submitted"

    @property
    def cost_limited(self) -> bool:
        return self.exit_status == COST_LIMITED

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Rollout:
        return cls(**data)


def run_episode(*, instance_id: str, stage: int, attempt: int, task: str, image: ImageRef, server: ModelServer,
                api_key: str | None, settings: RolloutSettings, trajectory_path: Path, secrets: list[str],
                template_index: int | None = None, limits: SandboxLimits | None = None, run_id: str | None = None,
                allow_unconfined_local: bool = False, server_name: str = "", budget: Budget | None = None) -> Rollout:
    """One episode in a fresh sandbox. `run_id` labels its container (and, on this process's first episode of the
    run, reaps the run's orphans); `allow_unconfined_local` is the platform's `images.allow_unconfined_local`;
    `server_name` names `server` in the record; `budget` is the instance's (its calls are charged to it)."""
    from minisweagent.agents.default import DefaultAgent

    if run_id and image.kind == "docker":
        _reap_once(run_id)

    templates = prompts.agent_templates()
    model = AgentModel(server, api_key, temperature=settings.temperature, max_tokens=settings.max_tokens,
                       observation_template=templates["observation_template"],
                       format_error_template=templates["format_error_template"], name=server_name, budget=budget)
    started = time.monotonic()
    error = None
    with open_sandbox(image, command_timeout_s=settings.command_timeout_s, name=f"{instance_id}-r{stage}-a{attempt}",
                      limits=limits, time_limit_s=settings.time_limit_s, run_id=run_id,
                      allow_unconfined=allow_unconfined_local or trusted_unconfined(server)) as sandbox:
        agent = DefaultAgent(model, sandbox.env, system_template=templates["system_template"],
                             instance_template=templates["instance_template"], step_limit=settings.step_limit,
                             cost_limit=0, wall_time_limit_seconds=math.ceil(settings.time_limit_s))
        try:
            agent.run(task)
        except Exception as exc:  # the teacher is unreachable or something broke: not a finished episode
            error = exc
        try:
            patch = sandbox.patch()
        except SandboxError as exc:  # e.g. the agent deleted .git: nothing trustworthy to record
            error, patch = error or exc, ""
        limits_hit = sandbox.limits_hit
    trajectory = redact(agent.serialize({"instance_id": instance_id}), secrets)
    atomic_write_text(trajectory_path, json.dumps(trajectory, indent=1))
    if error is not None:
        hit = f" [limits hit: {'; '.join(limits_hit)}]" if limits_hit else ""
        raise EpisodeError(f"instance {instance_id} rollout {stage}: {type(error).__name__}: "
                           f"{redact(str(error), secrets)}{hit}") from None
    return Rollout(instance_id=instance_id, stage=stage, attempt=attempt, task=redact(task, secrets),
                   exit_status=trajectory["info"]["exit_status"], patch=redact(patch, secrets),
                   model_calls=model.usage.calls,
                   prompt_tokens=model.usage.prompt_tokens, completion_tokens=model.usage.completion_tokens,
                   duration_s=round(time.monotonic() - started, 3),
                   trajectory_file=trajectory_path.name, template_index=template_index, limits_hit=limits_hit,
                   server=server_name, cost_usd=round(model.usage.cost_usd, 6))


def _reap_once(run_id: str) -> None:
    """Remove the run's containers left by dead workers, once per run in this process (its first episode)."""
    with _reap_lock:
        if run_id in _reaped_runs:
            return
        _reaped_runs.add(run_id)
    reap_orphans(run_id)
