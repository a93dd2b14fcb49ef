"""Batch planning: bounded task counts at SERA scale, whole rounds of the server's concurrency, commits together."""
from collections import Counter

from sera_ops.pipeline.planner import batch_size, capacity_shares, plan_batches, plan_servers
from sera_ops.records import Instance
from sera_ops.settings import ModelServer


def instances(count: int, commits: int = 5) -> list[Instance]:
    """Round-robin over commits, as `build.inventory.sample_instances` orders them."""
    return [Instance(f"repo_c{n % commits}_{10000 + n}", "repo", f"c{n % commits}", "f", "m.py", 0)
            for n in range(count)]


def test_batches_stay_bounded_at_sera_scale_and_every_instance_is_planned_once():
    for count in (1, 7, 2_000, 10_000, 50_000):
        planned = plan_batches(instances(count), configured=8, max_batches=256, episodes=4)
        assert len(planned) <= 256
        ids = [i for batch in planned.values() for i in batch]
        assert sorted(ids) == sorted(i.instance_id for i in instances(count))
        assert len(set(ids)) == count


def test_small_runs_keep_the_configured_size_rounded_to_the_servers_concurrency():
    assert batch_size(100, configured=8, max_batches=256, episodes=4) == 8
    assert batch_size(100, configured=8, max_batches=256, episodes=6) == 12
    assert batch_size(10_000, configured=8, max_batches=256, episodes=8) == 40
    assert batch_size(50_000, configured=8, max_batches=256, episodes=8) == 200


def test_instances_of_one_commit_share_batches():
    planned = plan_batches(instances(40, commits=4), configured=10, max_batches=256, episodes=2)
    commits_per_batch = [Counter(i.split("_")[1] for i in batch) for batch in planned.values()]
    assert all(len(commits) == 1 for commits in commits_per_batch)


def server(concurrency: int, parallel_batches: int = 2) -> ModelServer:
    return ModelServer(base_url="http://127.0.0.1:9/v1", model="m", concurrency=concurrency,
                       parallel_batches=parallel_batches, episodes_per_slot=1)


def test_capacity_shares_are_proportional_and_add_up():
    assert capacity_shares(12, {"a": 8, "b": 4}) == {"a": 8, "b": 4}
    assert capacity_shares(10, {"a": 1, "b": 1, "c": 1}) == {"a": 4, "b": 3, "c": 3}
    assert capacity_shares(0, {"a": 3, "b": 1}) == {"a": 0, "b": 0}
    assert sum(capacity_shares(10_001, {"a": 7, "b": 5, "c": 3}).values()) == 10_001


def test_servers_get_instances_by_capacity_and_commits_split_only_at_share_boundaries():
    servers = {"big": server(8, parallel_batches=3), "small": server(4)}  # capacities 24 and 8
    planned = plan_servers(instances(10_000), configured=8, max_batches=256, servers=servers)
    per_server = Counter()
    commits = {}
    for batch in planned.values():
        per_server[batch["server"]] += len(batch["instances"])
        for instance_id in batch["instances"]:
            commits.setdefault(instance_id.split("_")[1], set()).add(batch["server"])
    assert per_server == {"big": 7_500, "small": 2_500}
    assert sum(len(on) > 1 for on in commits.values()) <= 1
    assert len(planned) <= 256 and list(planned) == [f"b{n:04d}" for n in range(len(planned))]
    sizes = {}
    for batch in planned.values():
        sizes.setdefault(batch["server"], len(batch["instances"]))
    assert sizes["big"] % 8 == 0 and sizes["small"] % 4 == 0  # whole rounds of each server's own episodes


def test_one_server_plans_as_before():
    planned = plan_servers(instances(100), configured=8, max_batches=256, servers={"only": server(4)})
    assert {batch_id: batch["instances"] for batch_id, batch in planned.items()} == \
        plan_batches(instances(100), configured=8, max_batches=256, episodes=4)
    assert {batch["server"] for batch in planned.values()} == {"only"}
