"""From per-instance results to the published dataset: t1.jsonl, t2.jsonl, stats.json, and a pointer to the latest.

t1 holds rollout-one trajectories the judge accepted, t2 rollout-two trajectories whose patch reached the recall
threshold. A rollout-one patch that another instance already made was collapsed before synthesize (its
`duplicate.json` names the owner, as SERA deduplicated before stage two) and appears in neither. Records are
ordered by instance id, so a re-run writes identical files. Held-out instances (split `eval`) are evaluation tasks
and never records; a record whose patch is an evaluation task's reference patch is dropped too (`held_out`).
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

from sera_ops.dataset.card import write_dataset_card
from sera_ops.dataset.formats import trajectory_to_record
from sera_ops.records import COST_LIMITED, EVAL_SPLIT, Rollout, RolloutOne
from sera_ops.rollouts.spend import SpendLedger
from sera_ops.settings import PostprocessOptions
from sera_ops.store.io import atomic_write_jsonl, read_json, store_url
from sera_ops.store.layout import RunStore
from sera_ops.verify import changed_lines, patch_fingerprint

COUNTED = ("instances", "rollout_one", "rollout_one_attempts", "rollout_one_submitted", "judged_good",
           "duplicate_patches", "synthetic_prs", "rollout_two", "rollout_two_submitted", "verified",
           "rollout1_errors", "synth_errors", "rollout2_errors", COST_LIMITED, "not_started",
           "held_out_patches")
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
    recorded = store.error(instance_id, stage)
    if recorded:
        return stage, recorded.first_line
    stopped = store.not_started(instance_id)
    return stage, f"not run ({stopped.reason if stopped else 'its batch task failed or never ran'})"


def _cost_limited(store: RunStore, instance_id: str, rollout_one: RolloutOne) -> bool:
    """Whether the instance's cost limit stopped any of its stages."""
    synthesis, two = store.synth(instance_id), store.rollout_two(instance_id)
    return bool(rollout_one.cost_limited or (synthesis and synthesis.cost_limited) or (two and two.cost_limited))


def assemble(store: RunStore, options: PostprocessOptions, header: dict,
             held_out: frozenset[str] = frozenset()) -> dict:
    """Write the dataset files and return the statistics (also written as stats.json), `header` first. `held_out`:
    fingerprints of evaluation tasks' reference patches, which no record may carry."""
    instances = sorted((r for r in store.instance_records() if r.get("split", "train") != EVAL_SPLIT),
                       key=lambda r: r["instance_id"])
    counts: Counter[str] = Counter()
    usage = _Usage()
    failures: list[tuple[str, str]] = []
    t1, t2, recalls = [], [], []
    for record in instances:
        iid = record["instance_id"]
        counts["instances"] += 1
        files = store.instance(iid)
        counts.update(f"{stage}_errors" for stage in STAGES if files.error(stage).exists())
        one = store.rollout_one(iid)
        if not one:
            if files.not_started.exists():
                counts["not_started"] += 1
            else:
                failures.append(_failure(store, iid, "rollout1"))
            continue
        final = one.final
        counts["rollout_one"] += 1
        counts["rollout_one_attempts"] += len(one.attempts)
        counts["rollout_one_submitted"] += final.submitted
        for attempt in one.attempts:
            usage.add_agent("rollout1", Rollout.from_dict(attempt["rollout"]))
        usage.add("rollout1", "judge", one.judge_usage)
        counts[COST_LIMITED] += _cost_limited(store, iid, one)
        if not one.is_good_patch:
            continue
        counts["judged_good"] += 1
        if files.duplicate.exists():
            counts["duplicate_patches"] += 1
            continue
        # A patch that is an evaluation task's reference makes no record (nor does its PR's rollout two), but what
        # was spent on it still counts.
        leaked = patch_fingerprint(final.patch) in held_out
        counts["held_out_patches"] += leaked
        if not leaked and (rec := trajectory_to_record(store.trajectory(iid, final.trajectory_file), iid, options)):
            t1.append({**rec, "changed_lines": len(changed_lines(final.patch))})
        synthesis = store.synth(iid)
        if synthesis is None:
            failures.append(_failure(store, iid, "synth"))
            continue
        counts["synthetic_prs"] += bool(synthesis.synth_pr)
        if synthesis.writer_usage is not None:  # not in records from before writer usage was kept
            usage.add("synth", "writer", synthesis.writer_usage)
        two = store.rollout_two(iid)
        if not two:
            if synthesis.synth_pr:
                failures.append(_failure(store, iid, "rollout2"))
            continue
        counts["rollout_two"] += 1
        counts["rollout_two_submitted"] += two.submitted
        usage.add_agent("rollout2", two)
        verdict = store.verdict(iid)
        if verdict is None:
            continue
        recalls.append(verdict.recall)
        if not verdict.resolved or leaked:
            continue
        if patch_fingerprint(two.patch) in held_out:
            counts["held_out_patches"] += 1
            continue
        counts["verified"] += 1
        if rec := trajectory_to_record(read_json(files.rollout_two_trajectory), iid, options):
            t2.append({**rec, "changed_lines": len(changed_lines(two.patch))})
    out = store.dataset
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
        "spent_usd": round(SpendLedger(store.spend_dir).total(), 6),
        "records": {"t1": atomic_write_jsonl(out.split("t1"), t1), "t2": atomic_write_jsonl(out.split("t2"), t2)},
        "dataset_dir": store_url(out.dir),
    }
    store.write_json(out.stats, stats)
    write_dataset_card(store, stats, known)
    return stats


def publish(store: RunStore) -> dict | None:
    """Point `<repo>/datasets/latest.json` at this run's dataset (what training picks up by default); None when the
    run produced no records, so nothing downstream is triggered by an empty dataset."""
    stats = read_json(store.dataset.stats)
    if not any(stats["records"].values()):
        return None
    pointer = {"repo": store.repo, "run_id": store.run_id, "dataset_dir": stats["dataset_dir"],
               "records": stats["records"], "published_at": time.time()}
    store.write_json(store.repo_store.published_pointer(store.run_id), pointer)
    store.write_json(store.repo_store.latest_dataset, pointer)
    return pointer
