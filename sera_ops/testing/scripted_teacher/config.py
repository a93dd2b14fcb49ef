"""How a scripted teacher behaves (`ScriptedTeacherConfig`), and the seeded choices every part of its script shares.

Every random-looking decision of the teacher is a `stable_fraction` of the seed and the request, so that a run is
reproducible across processes; `rollout_two_mode` is the first such decision (full, partial or none), made per PR.
The markers here are the teacher's conventions that more than one of its parts reads: the submit command's marker and
the note on the first command, from which the judge and the writer learn what an episode was about.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

MODES = ("full", "partial", "none")
SUBMIT_MARKER = "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"
"""What the agent's last command prints: mini-swe-agent ends the episode on it."""

LOCATE_NOTE = re.compile(r"# locate ([A-Za-z_][\w.]*) in (\S+?\.py)(?![\w/.])")
"""The comment on the teacher's first command; the judge and the writer read the target back from it."""


@dataclass(frozen=True)
class ScriptedTeacherConfig:
    """How the scripted teacher behaves; every random-looking choice is a stable hash of `seed` and the request.

    `judge_reject_first_attempts` (a share) and `noop_first_attempt` (a comment-only edit, which the judge turns
    down) make rollout one's first attempt at a function fail, so that the pipeline's retry with another vague report
    is exercised. The first attempt is the first vague report about that function this teacher sees.
    """

    model: str = "scripted-teacher"
    api_key: str | None = field(default=None, repr=False)
    rollout_two_modes: Mapping[str, float] = field(default_factory=lambda: {"full": 1.0})
    judge_reject_rate: float = 0.0
    judge_reject_first_attempts: float = 0.0
    noop_first_attempt: bool = False
    latency_s: float = 0.0
    error_rate: float = 0.0
    stall_rate: float = 0.0
    stall_s: float = 30.0
    seed: int = 0
    host: str = "127.0.0.1"
    port: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.rollout_two_modes) - set(MODES)
        if unknown:
            raise ValueError(f"rollout_two_modes: unknown mode(s) {sorted(unknown)}; expected some of {MODES}")
        weights = list(self.rollout_two_modes.values())
        if any(weight < 0 for weight in weights) or sum(weights) <= 0:
            raise ValueError("rollout_two_modes: weights must be non-negative with a positive sum")
        for name in ("judge_reject_rate", "judge_reject_first_attempts", "error_rate", "stall_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.latency_s < 0 or self.stall_s < 0:
            raise ValueError("latency_s and stall_s must not be negative")
        object.__setattr__(self, "rollout_two_modes", MappingProxyType(dict(self.rollout_two_modes)))


def stable_fraction(seed: int, *parts: str) -> float:
    """A number in [0, 1) that depends only on the seed and the parts (unlike hash(), stable across processes)."""
    key = "\x1f".join([str(seed), *parts]).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64


def rollout_two_mode(config: ScriptedTeacherConfig, pr_text: str, request_seed: int | None = None) -> str:
    """The mode (full/partial/none) the teacher plays for a rollout-two task; the same PR text always gets the same,
    unless the request carries a `seed` (evaluation seeds): then each seed draws its own."""
    total = sum(config.rollout_two_modes.values())
    seeded = () if request_seed is None else (f"request seed {request_seed}",)
    point = stable_fraction(config.seed, "mode", *seeded, pr_text.strip()) * total
    chosen = "none"
    for mode in MODES:
        weight = config.rollout_two_modes.get(mode, 0.0)
        if weight <= 0:
            continue
        chosen = mode
        if point < weight:
            break
        point -= weight
    return chosen
