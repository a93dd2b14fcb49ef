"""After the judge: an LLM writes the synthetic PR for a good patch, in the style of one demonstration issue.

Choices are seeded (SERA's were not): the same seed and instance pick the same demonstration, and a retried rollout one
gets a template it has not tried before (`pick_distinct`).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

from sera_ops import prompts
from sera_ops.records import Synthesis
from sera_ops.rollouts.spend import CostLimitReached
from sera_ops.rollouts.teacher import TeacherClient
from sera_ops.settings import SynthSettings

log = logging.getLogger(__name__)


def pick(pool_size: int, seed: int, *key: object) -> int:
    """A reproducible choice (SERA's choices were unseeded): same seed and key, same pick."""
    return random.Random(":".join(str(part) for part in (seed, *key))).randrange(pool_size)


def pick_distinct(pool_size: int, seed: int, *key: object, attempt: int) -> int:
    """The `attempt`-th pick of a reproducible order without repeats: each retry gets a choice not tried before
    (until the pool is used up)."""
    order = list(range(pool_size))
    random.Random(":".join(str(part) for part in (seed, *key))).shuffle(order)
    return order[attempt % pool_size]


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
