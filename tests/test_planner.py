"""Batch planning: bounded task counts at SERA scale, whole rounds of the server's concurrency, commits together."""
from collections import Counter

from sera_ops.functions import Instance
from sera_ops.planner import batch_size, plan_batches


def instances(count: int, commits: int = 5) -> list[Instance]:
    """Round-robin over commits, as `functions.sample_instances` orders them."""
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
