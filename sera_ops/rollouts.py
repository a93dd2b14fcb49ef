"""One agent episode with mini-swe-agent: a task in, a trajectory and a patch out.

An episode ends normally when the agent submits or hits its step, time or format-error limit; anything else (the
teacher unreachable after the client's retries, a broken sandbox) raises EpisodeError, so the instance is retried
rather than recorded as finished. The patch is the sandbox's `git diff` after the episode (also when a limit cut it
short), not what the agent chose to print; the trajectory is saved with every configured secret redacted.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sera_ops import prompts
from sera_ops.config import ModelServer, RolloutSettings
from sera_ops.images import ImageRef
from sera_ops.sandbox import open_sandbox
from sera_ops.store import atomic_write_text
from sera_ops.teachers import AgentModel

log = logging.getLogger(__name__)

REDACTED = "[REDACTED]"


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

    @property
    def submitted(self) -> bool:
        return self.exit_status.lower() == "submitted"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Rollout:
        return cls(**data)


def redact(data: Any, secrets: list[str]) -> Any:
    """Replace every occurrence of a secret value in every string of a JSON-like structure."""
    secrets = [s for s in secrets if s and len(s) >= 4]
    if not secrets:
        return data
    text = json.dumps(data)
    for secret in secrets:
        text = text.replace(json.dumps(secret)[1:-1], REDACTED)
    return json.loads(text)


def run_episode(*, instance_id: str, stage: int, attempt: int, task: str, image: ImageRef, server: ModelServer,
                api_key: str | None, settings: RolloutSettings, trajectory_path: Path, secrets: list[str],
                template_index: int | None = None) -> Rollout:
    from minisweagent.agents.default import DefaultAgent

    templates = prompts.agent_templates()
    model = AgentModel(server, api_key, temperature=settings.temperature, max_tokens=settings.max_tokens,
                       observation_template=templates["observation_template"],
                       format_error_template=templates["format_error_template"])
    started = time.monotonic()
    error = None
    with open_sandbox(image, command_timeout_s=settings.command_timeout_s,
                      name=f"{instance_id}-r{stage}-a{attempt}") as sandbox:
        agent = DefaultAgent(model, sandbox.env, system_template=templates["system_template"],
                             instance_template=templates["instance_template"], step_limit=settings.step_limit,
                             cost_limit=0, wall_time_limit_seconds=math.ceil(settings.time_limit_s))
        try:
            agent.run(task)
        except Exception as exc:  # the teacher is unreachable or something broke: not a finished episode
            error = exc
        patch = sandbox.patch()
    trajectory = redact(agent.serialize({"instance_id": instance_id}), secrets)
    atomic_write_text(trajectory_path, json.dumps(trajectory, indent=1))
    if error is not None:
        raise EpisodeError(f"instance {instance_id} rollout {stage}: {type(error).__name__}: "
                           f"{redact(str(error), secrets)}") from None
    return Rollout(instance_id=instance_id, stage=stage, attempt=attempt, task=redact(task, secrets),
                   exit_status=trajectory["info"]["exit_status"], patch=redact(patch, secrets),
                   model_calls=model.usage.calls,
                   prompt_tokens=model.usage.prompt_tokens, completion_tokens=model.usage.completion_tokens,
                   duration_s=round(time.monotonic() - started, 3),
                   trajectory_file=trajectory_path.name, template_index=template_index)
