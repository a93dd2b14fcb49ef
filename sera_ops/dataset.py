"""From per-instance results to the published dataset: t1.jsonl, t2.jsonl, stats.json, and a pointer to the latest.

t1 holds rollout-one trajectories the judge accepted, t2 rollout-two trajectories whose patch reached the recall
threshold. A rollout-one patch that another instance already made was collapsed before synthesize (its
`duplicate.json` names the owner, as SERA deduplicated before stage two) and appears in neither. Records are
ordered by instance id, so a re-run writes identical files.
An instance that was due a stage (rollout one always, the PR when judged good, rollout two when it got a PR) but has
no output from it failed there; stats.json counts those per stage with the most common errors.
"""

from __future__ import annotations

import time
from collections import Counter

from sera_ops.dataset_card import write_dataset_card
from sera_ops.postprocess import PostprocessOptions, trajectory_to_record
from sera_ops.rollouts import Rollout
from sera_ops.store import RunStore, atomic_write_jsonl, read_json
from sera_ops.verify import changed_lines

COUNTED = ("instances", "rollout_one", "rollout_one_attempts", "rollout_one_submitted", "judged_good",
           "duplicate_patches", "synthetic_prs", "rollout_two", "rollout_two_submitted", "verified",
           "rollout1_errors", "synth_errors", "rollout2_errors")
STAGES = ("rollout1", "synth", "rollout2")
TOP_ERRORS = 3


def _failure(store: RunStore, instance_id: str, stage: str) -> tuple[str, str]:
    """The stage an instance failed at and why: its recorded error's first line, or that the stage never ran."""
    recorded = store.read_json(store.instance_file(instance_id, f"{stage}.error.json"))
    reason = recorded["error"].splitlines()[0][:300] if recorded else "not run (its batch task failed or never ran)"
    return stage, reason


def assemble(store: RunStore, options: PostprocessOptions, header: dict) -> dict:
    """Write the dataset files and return the statistics (also written as stats.json), `header` first."""
    instances = sorted(store.read_json(store.path("instances.json"), []), key=lambda r: r["instance_id"])
    counts: Counter[str] = Counter()
    tokens: Counter[str] = Counter()
    failures: list[tuple[str, str]] = []
    t1, t2, recalls = [], [], []
    for record in instances:
        iid = record["instance_id"]
        counts["instances"] += 1
        counts.update(f"{stage}_errors" for stage in STAGES
                      if store.instance_file(iid, f"{stage}.error.json").exists())
        one = store.read_json(store.instance_file(iid, "rollout1.json"))
        if not one:
            failures.append(_failure(store, iid, "rollout1"))
            continue
        final = Rollout.from_dict(one["final"])
        counts["rollout_one"] += 1
        counts["rollout_one_attempts"] += len(one["attempts"])
        counts["rollout_one_submitted"] += final.submitted
        for attempt in one["attempts"]:
            tokens["prompt"] += attempt["rollout"]["prompt_tokens"]
            tokens["completion"] += attempt["rollout"]["completion_tokens"]
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
        two = store.read_json(store.instance_file(iid, "rollout2.json"))
        if not two:
            if synthesis["synth_pr"]:
                failures.append(_failure(store, iid, "rollout2"))
            continue
        counts["rollout_two"] += 1
        counts["rollout_two_submitted"] += Rollout.from_dict(two).submitted
        tokens["prompt"] += two["prompt_tokens"]
        tokens["completion"] += two["completion_tokens"]
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
        "tokens": dict(tokens),
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
