"""Evaluation tasks from a run's held-out instances, and the patches training must never see.

A held-out instance whose rollout-one patch the judge accepted, that no other instance already made, and that got a
synthetic PR becomes an `EvalTask` in the repository's store (`eval/tasks/<id>.json`); tasks of every run
accumulate there, which is what `sera_eval__<repo>` evaluates.
"""

from __future__ import annotations

from sera_ops.records import EvalTask, Instance
from sera_ops.store.layout import RepoStore, RunStore
from sera_ops.verify import patch_fingerprint


def write_tasks(store: RunStore, test_cmd: str | None) -> dict[str, int]:
    """Write the run's evaluation tasks (idempotent: a task is rewritten with the same content) and count them."""
    held = [Instance.from_dict(r) for r in store.instance_records()]
    held = [instance for instance in held if instance.held_out]
    written = 0
    for instance in held:
        iid = instance.instance_id
        one, synthesis = store.rollout_one(iid), store.synth(iid)
        if not (one and one.is_good_patch) or store.instance(iid).duplicate.exists():
            continue
        if not (synthesis and synthesis.synth_pr):
            continue
        task = EvalTask(task_id=iid, repo=instance.repo, commit=instance.commit,
                        image=store.read_json(store.image(instance.commit)), problem_statement=synthesis.synth_pr,
                        reference_patch=one.final.patch, start_fn=instance.start_fn,
                        start_fn_file=instance.start_fn_file, run_id=store.run_id, test_cmd=test_cmd)
        store.write_json(store.repo_store.task(iid), task.to_dict())
        written += 1
    return {"instances": len(held), "tasks": written, "tasks_in_repo": len(store.repo_store.tasks())}


def held_out_patches(repo: RepoStore) -> frozenset[str]:
    """Fingerprints of every evaluation task's reference patch: a training record with one of these is dropped."""
    return frozenset(patch_fingerprint(task.reference_patch) for task in repo.tasks())
