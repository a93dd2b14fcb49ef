"""From per-instance results to the published dataset: t1.jsonl, t2.jsonl, stats.json, and a pointer to the latest.

t1 holds rollout-one trajectories the judge accepted, t2 rollout-two trajectories whose patch reached the recall
threshold. A rollout-one patch that another instance already made was collapsed before synthesize (its
`duplicate.json` names the owner, as SERA deduplicated before stage two) and appears in neither. Records are
ordered by instance id, so a re-run writes identical files.
An instance that was due a stage (rollout one always, the PR when judged good, rollout two when it got a PR) but has
no output from it failed there; stats.json counts those per stage with the most common errors. An instance the run's
cost limit kept from starting (`not_started.json`) is counted as `not_started`, not as failed.

`usage` sums the teacher calls, tokens and cost recorded with each instance per stage and kind of call (rollout one's
agent and judge, the writer, rollout two's agent), per server and in all; `cost_usd` is its total. `spent_usd` is the
run's spend ledger, which `cost_limits.per_run_usd` is checked against: it also counts failed tries.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from sera_ops.dataset_card import write_dataset_card
from sera_ops.postprocess import PostprocessOptions, trajectory_to_record
from sera_ops.rollouts import Rollout
from sera_ops.store import RunStore, atomic_write_jsonl, read_json
from sera_ops.teachers import COST_LIMITED, SpendLedger
from sera_ops.verify import changed_lines

COUNTED = ("instances", "rollout_one", "rollout_one_attempts", "rollout_one_submitted", "judged_good",
           "duplicate_patches", "synthetic_prs", "rollout_two", "rollout_two_submitted", "verified",
           "rollout1_errors", "synth_errors", "rollout2_errors", COST_LIMITED, "not_started")
STAGES = ("rollout1", "synth", "rollout2")
TOP_ERRORS = 3
USAGE_FIELDS = ("calls", "prompt_tokens", "completion_tokens", "cost_usd")
CALL_KINDS = {"rollout1": ("agent", "judge"), "synth": ("writer",), "rollout2": ("agent",)}


class _Usage:
    """Teacher calls, tokens and cost summed per stage and kind of call, per server, and in all."""

    def __init__(self) -> None:
        self.by_stage = {stage: {kind: Counter() for kind in kinds} for stage, kinds in CALL_KINDS.items()}
        self.by_server: dict[str, Counter] = {}
        self.total: Counter = Counter()

    def add(self, stage: str, kind: str, usage: dict[str, Any]) -> None:
        amounts = {key: usage.get(key, 0) for key in USAGE_FIELDS}  # records from before costs lack cost_usd
        server = self.by_server.setdefault(usage.get("server") or "unknown", Counter())
        for tally in (self.by_stage[stage][kind], server, self.total):
            tally.update(amounts)

    def add_agent(self, stage: str, rollout: Rollout) -> None:
        self.add(stage, "agent", {"server": rollout.server, "calls": rollout.model_calls,
                                  "prompt_tokens": rollout.prompt_tokens,
                                  "completion_tokens": rollout.completion_tokens, "cost_usd": rollout.cost_usd})

    def to_dict(self) -> dict[str, Any]:
        def rounded(tally: Counter) -> dict[str, Any]:
            return {key: round(tally[key], 6) if key == "cost_usd" else tally[key] for key in USAGE_FIELDS}

        return {"total": rounded(self.total),
                "by_stage": {stage: {kind: rounded(tally) for kind, tally in kinds.items()}
                             for stage, kinds in self.by_stage.items()},
                "by_server": {name: rounded(tally) for name, tally in sorted(self.by_server.items())}}


def _failure(store: RunStore, instance_id: str, stage: str) -> tuple[str, str]:
    """The stage an instance failed at and why: its recorded error's first line, or that the stage never ran (and why,
    when the run's cost limit stopped it)."""
    recorded = store.read_json(store.instance_file(instance_id, f"{stage}.error.json"))
    if recorded:
        return stage, recorded["error"].splitlines()[0][:300]
    stopped = store.read_json(store.instance_file(instance_id, "not_started.json"))
    return stage, f"not run ({stopped['reason'] if stopped else 'its batch task failed or never ran'})"


def _cost_limited(store: RunStore, instance_id: str, rollout_one: dict) -> bool:
    """Whether the instance's cost limit stopped any of its stages."""
    synthesis = store.read_json(store.instance_file(instance_id, "synth.json")) or {}
    two = store.read_json(store.instance_file(instance_id, "rollout2.json"))
    return bool(rollout_one.get(COST_LIMITED) or synthesis.get(COST_LIMITED) or
                (two and Rollout.from_dict(two).cost_limited))


def assemble(store: RunStore, options: PostprocessOptions, header: dict) -> dict:
    """Write the dataset files and return the statistics (also written as stats.json), `header` first."""
    instances = sorted(store.read_json(store.path("instances.json"), []), key=lambda r: r["instance_id"])
    counts: Counter[str] = Counter()
    usage = _Usage()
    failures: list[tuple[str, str]] = []
    t1, t2, recalls = [], [], []
    for record in instances:
        iid = record["instance_id"]
        counts["instances"] += 1
        counts.update(f"{stage}_errors" for stage in STAGES
                      if store.instance_file(iid, f"{stage}.error.json").exists())
        one = store.read_json(store.instance_file(iid, "rollout1.json"))
        if not one:
            if store.instance_file(iid, "not_started.json").exists():
                counts["not_started"] += 1
            else:
                failures.append(_failure(store, iid, "rollout1"))
            continue
        final = Rollout.from_dict(one["final"])
        counts["rollout_one"] += 1
        counts["rollout_one_attempts"] += len(one["attempts"])
        counts["rollout_one_submitted"] += final.submitted
        for attempt in one["attempts"]:
            usage.add_agent("rollout1", Rollout.from_dict(attempt["rollout"]))
        usage.add("rollout1", "judge", one["judge_usage"])
        counts[COST_LIMITED] += _cost_limited(store, iid, one)
        if not one["is_good_patch"]:
            continue
        counts["judged_good"] += 1
        if store.instance_file(iid, "duplicate.json").exists():
            counts["duplicate_patches"] += 1
            continue
        if rec := trajectory_to_record(read_json(store.instance_file(iid, final.trajectory_file)), iid, options):
            t1.append({**rec, "changed_lines": len(changed_lines(final.patch))})
        synthesis = store.read_json(store.instance_file(iid, "synth.json"))
        if synthesis is None:
            failures.append(_failure(store, iid, "synth"))
            continue
        counts["synthetic_prs"] += bool(synthesis["synth_pr"])
        if "writer_usage" in synthesis:  # not in records from before writer usage was kept
            usage.add("synth", "writer", synthesis["writer_usage"])
        two = store.read_json(store.instance_file(iid, "rollout2.json"))
        if not two:
            if synthesis["synth_pr"]:
                failures.append(_failure(store, iid, "rollout2"))
            continue
        second = Rollout.from_dict(two)
        counts["rollout_two"] += 1
        counts["rollout_two_submitted"] += second.submitted
        usage.add_agent("rollout2", second)
        verdict = store.read_json(store.instance_file(iid, "verdict.json"))
        if verdict is None:
            continue
        recalls.append(verdict["recall"])
        if not verdict["resolved"]:
            continue
        counts["verified"] += 1
        if rec := trajectory_to_record(read_json(store.instance_file(iid, "rollout2.traj.json")), iid, options):
            t2.append({**rec, "changed_lines": len(changed_lines(two["patch"]))})
    out = store.dataset_dir
    known = [r for r in recalls if r is not None]
    failed_at = Counter(stage for stage, _ in failures)
    stats = {
        **header,
        **{key: counts[key] for key in COUNTED},
        "mean_recall": round(sum(known) / len(known), 4) if known else None,
        "failed": {"instances": len(failures), **{stage: failed_at[stage] for stage in STAGES},
                   "by_error": dict(Counter(f"{stage}: {reason}" for stage, reason in failures)
                                    .most_common(TOP_ERRORS))},
        "usage": usage.to_dict(),
        "cost_usd": round(usage.total["cost_usd"], 6),
        "spent_usd": round(SpendLedger(store.path("spend")).total(), 6),
        "records": {"t1": atomic_write_jsonl(out / "t1.jsonl", t1), "t2": atomic_write_jsonl(out / "t2.jsonl", t2)},
        "dataset_dir": str(out),
    }
    store.write_json(out / "stats.json", stats)
    write_dataset_card(store, stats, known)
    return stats


def publish(store: RunStore) -> dict | None:
    """Point `<repo>/datasets/latest.json` at this run's dataset (what training picks up by default); None when the
    run produced no records, so nothing downstream is triggered by an empty dataset."""
    stats = read_json(store.dataset_dir / "stats.json")
    if not any(stats["records"].values()):
        return None
    pointer = {"repo": store.repo, "run_id": store.run_id, "dataset_dir": stats["dataset_dir"],
               "records": stats["records"], "published_at": time.time()}
    store.write_json(store.published_dir / f"{store.run_dir.name}.json", pointer)
    store.write_json(store.latest_dataset, pointer)
    return pointer
