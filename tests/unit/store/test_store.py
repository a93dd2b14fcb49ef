"""The run store: portable directory names, atomic writes that never leave half a file, typed records, and the one
place that spells the store's file names."""
import json
from pathlib import Path

import pytest

from sera_ops.records import Duplicate, InstanceError, NotStarted, Rollout, RolloutOne, Synthesis, Verdict
from sera_ops.store.io import atomic_write_json, claim, replacing, store_root
from sera_ops.store.layout import RepoStore, RunStore, safe_name
from tests.support.store import claims_from_threads


def test_run_ids_become_portable_directory_names():
    assert safe_name("manual__2026-11-25T07:50:14.007087+00:00") == "manual__2026-11-25T07_50_14.007087_00_00"
    assert safe_name("scheduled__x/../y") == "scheduled__x_.._y"
    with pytest.raises(ValueError):
        safe_name("///")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "a" / "result.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]


def test_layout_separates_runs_and_shares_caches(tmp_path):
    repo = RepoStore(tmp_path, "repo")
    one, two = repo.run("run:1"), repo.run("run:2")
    assert one.instance("i1").rollout_one != two.instance("i1").rollout_one
    assert one.repo_store.inventory_path("abc") == two.repo_store.inventory_path("abc")
    assert one.read_json(one.batches, default=[]) == []
    assert repo.run_names() == []
    one.write_json(one.commits, {"commits": []})
    two.write_json(two.commits, {"commits": []})
    assert repo.run_names() == ["run_1", "run_2"] and one.name == "run_1"


def test_a_local_root_keeps_the_layout_and_puts_everything_beside_it(tmp_path):
    run = RunStore(tmp_path, "my repo", "manual__1")
    repo = run.repo_store
    assert isinstance(repo.root, Path) and not repo.is_remote
    assert run.run_dir == tmp_path / "my_repo" / "runs" / "manual__1"
    assert run.instance("x").rollout_one == run.run_dir / "instances" / "x" / "rollout1.json"
    assert run.instance("x").error("synth") == run.run_dir / "instances" / "x" / "synth.error.json"
    assert run.image("abc") == run.run_dir / "images" / "abc.json"
    assert run.dataset.split("t1") == run.run_dir / "dataset" / "t1.jsonl"
    assert repo.sources_dir == tmp_path / "my_repo" / "sources"
    assert repo.snapshot_dir("abc") == tmp_path / "my_repo" / "cache" / "snapshots" / "abc"
    assert repo.latest_dataset == tmp_path / "my_repo" / "datasets" / "latest.json"
    assert repo.training_dir("job") == tmp_path / "my_repo" / "training" / "job"
    assert repo.model_dir("job") == tmp_path / "my_repo" / "models" / "job"


def test_a_remote_root_keeps_local_things_in_the_worker_cache(tmp_path):
    repo = RepoStore("s3://bucket/prefix", "tinyledger", local_cache=tmp_path / "cache")
    assert repo.is_remote and str(repo.dir) == "s3://bucket/prefix/tinyledger"
    assert repo.sources_dir == tmp_path / "cache" / "tinyledger" / "sources"
    assert repo.snapshot_dir("abc").is_relative_to(tmp_path / "cache")
    assert str(repo.run("r").instance("i").verdict) == "s3://bucket/prefix/tinyledger/runs/r/instances/i/verdict.json"
    assert store_root("file:///tmp/x") == Path("/tmp/x") and store_root("var/store") == Path("var/store")


def _rollout(instance_id: str, stage: int, patch: str = "diff") -> Rollout:
    return Rollout(instance_id=instance_id, stage=stage, attempt=0, task="t", exit_status="Submitted", patch=patch,
                   model_calls=3, prompt_tokens=10, completion_tokens=5, duration_s=1.0,
                   trajectory_file="rollout1.a0.traj.json")


def test_typed_records_round_trip(tmp_path):
    run = RunStore(tmp_path, "repo", "run")
    assert run.rollout_one("i") is None and run.synth("i") is None and run.verdict("i") is None
    one = RolloutOne(final=_rollout("i", 1), is_good_patch=True, attempts=[{"rollout": {}, "judgement": {}}],
                     judge_usage={"calls": 1})
    run.write_rollout_one("i", one)
    assert run.rollout_one("i") == one and json.loads(run.instance("i").rollout_one.read_text())["final"]["stage"] == 1
    synthesis = Synthesis(instance_id="i", synth_pr="Fix it", demo_index=2, demo_id="packaged[2]", calls=1,
                            writer_usage={"calls": 1})
    run.write_synth("i", synthesis)
    run.write_rollout_two("i", _rollout("i", 2))
    run.write_verdict("i", Verdict("i", 1.0, 0.5, True, 3, 3))
    run.write_duplicate("j", Duplicate(duplicate_of="i", patch="abc"))
    run.write_not_started("k", NotStarted(reason="over budget", spent_usd=1.5))
    run.write_error("i", InstanceError(stage="synth", error="Boom: first\nsecond", time=1.0))
    assert run.synth("i") == synthesis and run.rollout_two("i").stage == 2
    assert run.verdict("i").resolved and run.duplicate("j").duplicate_of == "i"
    assert run.not_started("k").reason == "over budget"
    assert run.error("i", "synth").first_line == "Boom: first"
    run.clear_error("i", "synth")
    run.clear_not_started("k")
    assert run.error("i", "synth") is None and run.not_started("k") is None


def test_records_from_older_versions_still_read(tmp_path):
    """synth.json from before writer usage was kept, and keys a newer version added, do not break a reader."""
    run = RunStore(tmp_path, "repo", "run")
    run.write_json(run.instance("i").synth, {"instance_id": "i", "synth_pr": None, "demo_index": 0,
                                             "demo_id": "packaged[0]", "calls": 1, "added_later": True})
    assert run.synth("i").writer_usage is None


def test_attempt_trajectories_are_listed_in_attempt_order(tmp_path):
    files = RunStore(tmp_path, "repo", "run").instance("i")
    assert files.attempt_trajectories() == []
    for attempt in (10, 2, 0):
        atomic_write_json(files.attempt_trajectory(attempt), {})
    atomic_write_json(files.rollout_two_trajectory, {})
    assert [p.name for p in files.attempt_trajectories()] == [f"rollout1.a{n}.traj.json" for n in (0, 2, 10)]




def test_claim_has_one_winner_among_concurrent_claimers(tmp_path):
    path = tmp_path / "patches" / "abc.owner"
    results = claims_from_threads(path)
    assert len(set(results)) == 1 and claim(path, results[0]) == results[0]


def test_replacing_leaves_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("the plotting library gave up")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["plot.png"]
