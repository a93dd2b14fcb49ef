"""One agent episode with mini-swe-agent: a task in, a trajectory and a patch out.

The patch is the sandbox's `git diff` after the episode (also when the step or time limit cut it short), not what the
agent chose to print; the trajectory is saved with every configured secret redacted.
"""

from __future__ import annotations

import json
import logging
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
    error: str | None
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
                             cost_limit=0, wall_time_limit_seconds=int(settings.time_limit_s))
        try:
            agent.run(task)
        except Exception as exc:  # the agent already recorded an exit message; keep the episode and its patch
            error = f"{type(exc).__name__}: {exc}"
            log.warning("instance %s rollout %d: episode ended with %s", instance_id, stage, error)
        patch = sandbox.patch()
    trajectory = redact(agent.serialize({"instance_id": instance_id}), secrets)
    atomic_write_text(trajectory_path, json.dumps(trajectory, indent=1))
    exit_status = trajectory["info"].get("exit_status") or ("Error" if error else "Unknown")
    return Rollout(instance_id=instance_id, stage=stage, attempt=attempt, task=redact(task, secrets),
                   exit_status=exit_status, patch=redact(patch, secrets), model_calls=model.usage.calls,
                   prompt_tokens=model.usage.prompt_tokens, completion_tokens=model.usage.completion_tokens,
                   duration_s=round(time.monotonic() - started, 3), error=redact(error, secrets),
                   trajectory_file=trajectory_path.name, template_index=template_index)
