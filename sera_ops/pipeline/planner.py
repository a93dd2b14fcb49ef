"""How a run's instances are split into batch tasks: few enough for Airflow, full enough for the teachers.

Every batch is one mapped task instance, so the number of batches bounds what the scheduler tracks: it stays at or
under `max_batches` however many instances a run has (50,000 instances at the default 256 are 196 per batch), far
below Airflow's `max_map_length` of 1024. A batch holds whole rounds of the episodes its task runs at once, so no
worker idles for want of an instance, and instances of one commit stay together: their prompts share the same
long prefix (system prompt, repository layout), which the server's prefix cache reuses. A run over several model
servers gives each a share in proportion to its capacity (`plan_servers`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from sera_ops.records import Instance
from sera_ops.settings import ModelServer


def batch_size(instances: int, configured: int, max_batches: int, episodes: int) -> int:
    """At least `configured`, large enough for at most `max_batches` batches, rounded up to whole rounds of
    `episodes` (what a batch task runs at once)."""
    size = max(configured, math.ceil(instances / max_batches), 1)
    return math.ceil(size / episodes) * episodes


def plan_batches(instances: Sequence[Instance], configured: int, max_batches: int, episodes: int
                 ) -> dict[str, list[str]]:
    """Batch id → instance ids: grouped by commit (in first-seen order), then cut into batches of `batch_size`."""
    order = {commit: index for index, commit in enumerate(dict.fromkeys(i.commit for i in instances))}
    ids = [i.instance_id for i in sorted(instances, key=lambda i: order[i.commit])]  # stable: sample order inside
    size = batch_size(len(ids), configured, max_batches, episodes)
    return {f"b{n:04d}": ids[start:start + size] for n, start in enumerate(range(0, len(ids), size))}


def capacity_shares(total: int, capacities: Mapping[str, int]) -> dict[str, int]:
    """How many of `total` instances each server gets, in proportion to its capacity (largest remainder, so the
    shares add up to `total`; ties go to the server listed first)."""
    whole = sum(capacities.values())
    exact = {name: total * capacity / whole for name, capacity in capacities.items()}
    shares = {name: math.floor(value) for name, value in exact.items()}
    by_remainder = sorted(exact, key=lambda name: shares[name] - exact[name])
    for name in by_remainder[:total - sum(shares.values())]:
        shares[name] += 1
    return shares


def plan_servers(instances: Sequence[Instance], configured: int, max_batches: int, servers: Mapping[str, ModelServer]
                 ) -> dict[str, dict]:
    """Batch id → {"server", "instances"} over several model servers. Each server gets a share of the instances in
    proportion to its capacity (`concurrency` × `parallel_batches`: the requests its pool lets be in flight) and of
    `max_batches`; the shares are contiguous runs of the commit-ordered instances, so a commit's instances stay on one
    server (its prefix cache) except where a share ends inside it. Each share is then cut by `plan_batches` with its
    own server's episodes per batch task."""
    order = {commit: index for index, commit in enumerate(dict.fromkeys(i.commit for i in instances))}
    ordered = sorted(instances, key=lambda i: order[i.commit])
    capacities = {name: server.concurrency * server.parallel_batches for name, server in servers.items()}
    shares = capacity_shares(len(ordered), capacities)
    planned, start = [], 0
    for name, server in servers.items():
        share = ordered[start:start + shares[name]]
        start += shares[name]
        batch_limit = max(1, max_batches * capacities[name] // sum(capacities.values()))
        batches = plan_batches(share, configured, batch_limit, server.concurrency * server.episodes_per_slot)
        planned += [(name, ids) for ids in batches.values()]
    return {f"b{n:04d}": {"server": name, "instances": ids} for n, (name, ids) in enumerate(planned)}
