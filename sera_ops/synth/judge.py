"""After rollout one: an LLM judge decides whether the patch fits the vague task it was asked to solve.

Unlike SERA, the judge (and the writer) see a compact list of steps (command + clipped output) plus the final patch
instead of the raw trajectory JSON, so long episodes fit the context; they may use another model server than the agent.
"""

from __future__ import annotations

import logging

from sera_ops import prompts
from sera_ops.records import Judgement
from sera_ops.rollouts.spend import CostLimitReached
from sera_ops.rollouts.teacher import TeacherClient
from sera_ops.settings import SynthSettings

log = logging.getLogger(__name__)


def clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters elided ...]\n{text[-half:]}"


def agent_steps(trajectory: dict, observation_chars: int) -> list[dict]:
    """(command, output) pairs from a mini-swe-agent trajectory, in order, in tool-call or text mode."""
    steps: list[dict] = []
    pending: list[str] = []
    for message in trajectory.get("messages", []):
        role, extra = message.get("role"), message.get("extra") or {}
        if role == "assistant":
            pending = [action.get("command", "") for action in extra.get("actions", [])]
        elif role in ("tool", "user") and pending and "raw_output" in extra:
            steps.append({"action": pending.pop(0), "observation": clip(extra["raw_output"], observation_chars)})
    return steps


def judge_patch(client: TeacherClient, settings: SynthSettings, initial_prompt: str, steps: list[dict],
                patch: str) -> Judgement:
    """Ask for yes/no in <output> tags; when the answer has no tags, retry with another quarter of the oldest steps
    dropped (the usual cause is a context overflow)."""
    answer = None
    for attempt in range(settings.judge_retries):
        kept = steps[len(steps) * attempt // 4:]
        try:
            reply = client.chat(prompts.JUDGE_SYSTEM, prompts.render_judge(initial_prompt, kept, patch),
                                temperature=settings.temperature, max_tokens=settings.max_tokens)
        except CostLimitReached:
            return Judgement(is_good_patch=False, answer=answer, calls=attempt, cost_limited=True)
        answer = prompts.extract_output(reply)
        if answer is not None:
            return Judgement(is_good_patch=answer.strip().lower() == "yes", answer=answer.strip(), calls=attempt + 1)
    return Judgement(is_good_patch=False, answer=answer, calls=settings.judge_retries)
