"""Which start functions are held out for evaluation: decided before generation, the same in every run.

A function is held out by a stable hash of the eval seed, its file and its name (not its source, so an edited
function stays held out), by `eval.count` (the lowest hashes, recorded on the first run and kept), or because its
commit is held out as a whole. Held-out functions never become training instances.
"""

from __future__ import annotations

import hashlib
import math

from sera_ops.records import StartFunction
from sera_ops.settings import EvalSettings


def holdout_rank(seed: int, key: str) -> float:
    """A number in [0, 1) that depends only on the seed and the function key (stable across processes)."""
    digest = hashlib.sha256(f"{seed}\x1f{key}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def choose_counted(settings: EvalSettings, keys: set[str], recorded: list[str]) -> list[str]:
    """The `count` held-out keys: those recorded by earlier runs, topped up with the lowest-ranked new keys when
    fewer than `count` were recorded (never fewer: a key once held out stays held out)."""
    chosen = list(recorded)
    missing = (settings.count or 0) - len(chosen)
    if missing > 0:
        fresh = sorted(keys - set(chosen), key=lambda key: (holdout_rank(settings.seed, key), key))
        chosen += fresh[:missing]
    return chosen


def is_held_out(settings: EvalSettings, commit: str, function: StartFunction, counted: set[str]) -> bool:
    if any(commit.startswith(held) for held in settings.commits):
        return True
    if settings.count:
        return function.key in counted
    return bool(settings.fraction) and holdout_rank(settings.seed, function.key) < settings.fraction


def tasks_per_run(settings: EvalSettings, function_limit: int) -> int:
    """How many evaluation instances a run samples from the held-out functions (see `eval.tasks_per_run`)."""
    if settings.tasks_per_run:
        return settings.tasks_per_run
    if settings.fraction:
        return max(1, math.ceil(function_limit * settings.fraction))
    return settings.count or function_limit
