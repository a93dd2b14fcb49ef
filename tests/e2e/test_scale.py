"""A run at scale without a scheduler: 2,000 instances with the scripted teacher answering at once, in the local
sandbox. Every sampled instance must end in exactly one place, and each record must appear once."""
import json
import os
from collections import Counter

import pytest

from sera_ops import pipeline
from sera_ops.pipeline.context import RunContext, RunParams
from sera_ops.settings import EvalSettings, load_platform, load_repos
from sera_ops.testing.dry_run import dry_run_platform
from sera_ops.testing.scripted_teacher import ScriptedTeacher, ScriptedTeacherConfig
from tests.support import ROOT

INSTANCES = int(os.environ.get("SERA_SCALE_INSTANCES", "2000"))
pytestmark = pytest.mark.slow


def test_every_instance_of_a_large_run_ends_in_exactly_one_place(tmp_path):
    with ScriptedTeacher(ScriptedTeacherConfig(latency_s=0.0)) as teacher:
        platform = load_platform(dry_run_platform(ROOT / "config" / "platform.yaml", tmp_path, teacher.url,
                                                  storage_root=tmp_path / "store",
                                                  overrides={"images": {"sandbox": "local"}}))
        platform.model_servers["scripted"] = platform.model_servers["scripted"].model_copy(
            update={"concurrency": 8, "max_retries": 1})
        spec = load_repos(platform)[0][0]
        copies = -(-INSTANCES // 80)
        spec = spec.model_copy(update={"fns_per_repo": 80, "insts_per_fn": copies, "eval": EvalSettings(),
                                       "batching": spec.batching
                                       .model_copy(update={"batch_size": 8, "max_batches": 4})})
        ctx = RunContext.create(platform, spec, "scale", RunParams())
        stats = pipeline.run_all(ctx)

    sampled = [record["instance_id"] for record in ctx.store.read_json(ctx.store.instances)]
    assert len(sampled) == len(set(sampled)) >= INSTANCES
    batches = ctx.store.read_json(ctx.store.batches)
    planned = sorted(i for batch in batches.values() for i in batch["instances"])
    assert len(batches) <= 4 and planned == sorted(sampled)
    endings = Counter()
    for instance_id in sampled:
        files = {path.name for path in ctx.store.instance(instance_id).dir.iterdir()}
        one = ctx.store.read_json(ctx.store.instance(instance_id).rollout_one)
        if "rollout1.error.json" in files:
            ending = "rollout one failed"
        elif not one["is_good_patch"]:
            ending = "judged bad"
        elif "duplicate.json" in files:
            ending = "duplicate patch"
        elif "verdict.json" in files:
            ending = "verified" if json.loads((ctx.store.instance(instance_id).dir / "verdict.json").read_text())[
                "resolved"] else "not verified"
        else:
            ending = "failed after rollout one"
        endings[ending] += 1
    assert sum(endings.values()) == len(sampled)
    records = {split: [json.loads(line)["instance_id"] for line in
                       (ctx.store.dataset_dir / f"{split}.jsonl").read_text().splitlines()] for split in ("t1", "t2")}
    assert len(records["t2"]) == len(set(records["t2"])) == endings["verified"] == stats["verified"]
    assert len(records["t1"]) == len(set(records["t1"])) == stats["records"]["t1"]
    assert stats["instances"] == len(sampled) == stats["duplicate_patches"] + stats["rollout_two"] + \
        endings["judged bad"], endings
    assert not endings["rollout one failed"] and not endings["failed after rollout one"], endings
