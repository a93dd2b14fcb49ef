"""After rollout one: an LLM judge decides whether the patch fits the vague task, and an LLM writes the synthetic PR.

Unlike SERA, the judge and writer see a compact list of steps (command + clipped output) plus the final patch instead
of the raw trajectory JSON, so long episodes fit the context; they may use another model server than the agent.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from sera_ops import prompts
from sera_ops.config import SynthSettings
from sera_ops.teachers import CostLimitReached, TeacherClient
from sera_ops.verify import changed_lines

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Judgement:
    is_good_patch: bool
    answer: str | None
    calls: int
    cost_limited: bool = False
    """The instance's cost limit stopped the judge before it answered (the patch then counts as not good)."""


@dataclass(frozen=True)
class Synthesis:
    """The synthetic PR for one instance (what rollout two is asked to solve)."""

    instance_id: str
    synth_pr: str | None
    demo_index: int
    demo_id: str
    """Which demonstration was imitated, e.g. `packaged[3]` or `owner/name#123`: stable when a pool is refreshed."""
    calls: int
    cost_limited: bool = False
    """The instance's cost limit stopped the writer before it wrote a PR."""
    writer_usage: dict | None = None
    """What writing it took (calls, tokens, cost); None in records from before writer usage was kept."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Synthesis:
        return cls(**{key: value for key, value in data.items() if key in cls.__dataclass_fields__})


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


def patch_fingerprint(patch: str) -> str:
    """Two patches that change the same lines of the same files get the same fingerprint, whatever their context
    lines, hunk offsets or whitespace-only changes."""
    sections = re.split(r"^(?=diff --git )", patch, flags=re.MULTILINE)
    parts = [f"{section.splitlines()[0] if section.startswith('diff --git ') else ''}\n"
             + "\n".join(line.rstrip() for line in changed_lines(section)) for section in sections if section.strip()]
    return hashlib.sha256("\n\0".join(sorted(parts)).encode()).hexdigest()


def pick(pool_size: int, seed: int, *key: object) -> int:
    """A reproducible choice (SERA's choices were unseeded): same seed and key, same pick."""
    return random.Random(":".join(str(part) for part in (seed, *key))).randrange(pool_size)


def pick_distinct(pool_size: int, seed: int, *key: object, attempt: int) -> int:
    """The `attempt`-th pick of a reproducible order without repeats: each retry gets a choice not tried before
    (until the pool is used up)."""
    order = list(range(pool_size))
    random.Random(":".join(str(part) for part in (seed, *key))).shuffle(order)
    return order[attempt % pool_size]


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


@dataclass(frozen=True)
class DemoIssue:
    """One demonstration (title line, blank line, body) with an id saying where it came from."""

    id: str
    text: str


def demo_pool(settings: SynthSettings) -> list[DemoIssue]:
    """The packaged pool or the `demo_issues` file; a GitHub source is `demo_issues.pool_for`'s (it needs the store)."""
    if settings.demo_issues:
        path = Path(settings.demo_issues)
        return [DemoIssue(f"{path.name}[{index}]", text) for index, text in enumerate(prompts.load_demo_issues(path))]
    return [DemoIssue(f"packaged[{index}]", text) for index, text in enumerate(prompts.demo_issues())]


def write_synthetic_pr(client: TeacherClient, settings: SynthSettings, instance_id: str, steps: list[dict],
                       patch: str, pool: list[DemoIssue], seed: int) -> Synthesis:
    demo_index = pick(len(pool), seed, instance_id, "demo")
    demo = pool[demo_index]
    user = prompts.render_synth_pr(steps, patch, demo.text, settings.reveal_location)
    for attempt in range(settings.writer_retries):
        try:
            reply = client.chat(prompts.WRITER_SYSTEM, user, temperature=settings.temperature,
                                max_tokens=settings.max_tokens)
        except CostLimitReached as exc:
            log.warning("instance %s: no synthetic PR: %s", instance_id, exc)
            return Synthesis(instance_id=instance_id, synth_pr=None, demo_index=demo_index, demo_id=demo.id,
                             calls=attempt, cost_limited=True)
        text = prompts.extract_output(reply)
        if text and text.strip():
            return Synthesis(instance_id=instance_id, synth_pr=text.strip(), demo_index=demo_index,
                             demo_id=demo.id, calls=attempt + 1)
    log.warning("instance %s: the writer gave no <output> in %d tries", instance_id, settings.writer_retries)
    return Synthesis(instance_id=instance_id, synth_pr=None, demo_index=demo_index, demo_id=demo.id,
                     calls=settings.writer_retries)
