"""How a run's instances are split into batch tasks: few enough for Airflow, full enough for the teachers.

Every batch is one mapped task instance, so the number of batches bounds what the scheduler tracks: it stays at or
under `max_batches` however many instances a run has (50,000 instances at the default 256 are 196 per batch), far
below Airflow's `max_map_length` of 1024. A batch holds a whole number of the model server's concurrency, so its
thread pool has an instance for every slot, and instances of one commit stay together: their prompts share the same
long prefix (system prompt, repository layout), which the server's prefix cache reuses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sera_ops.functions import Instance


def batch_size(instances: int, configured: int, max_batches: int, concurrency: int) -> int:
    """At least `configured`, large enough for at most `max_batches` batches, rounded up to whole rounds of
    `concurrency`."""
    size = max(configured, math.ceil(instances / max_batches), 1)
    return math.ceil(size / concurrency) * concurrency


def plan_batches(instances: Sequence[Instance], configured: int, max_batches: int, concurrency: int
                 ) -> dict[str, list[str]]:
    """Batch id → instance ids: grouped by commit (in first-seen order), then cut into batches of `batch_size`."""
    order = {commit: index for index, commit in enumerate(dict.fromkeys(i.commit for i in instances))}
    ids = [i.instance_id for i in sorted(instances, key=lambda i: order[i.commit])]  # stable: sample order inside
    size = batch_size(len(ids), configured, max_batches, concurrency)
    return {f"b{n:04d}": ids[start:start + size] for n, start in enumerate(range(0, len(ids), size))}
