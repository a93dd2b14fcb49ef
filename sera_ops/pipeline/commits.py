"""The per-commit stages: select commits, mirror them, build each commit's image and inventory, sample the instances.

A commit's failed build or inventory is recorded as `images/<commit>.error.json` and fails only that commit's task,
so that a run left with no usable commit can say why.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, replace
from pathlib import Path

from sera_ops.build import existing, images
from sera_ops.build.inventory import (
    InventoryError,
    detect_code_folders,
    inventory_from_json,
    inventory_to_json,
    list_functions,
    sample_instances,
)
from sera_ops.evaluate.holdout import choose_counted, is_held_out, tasks_per_run
from sera_ops.pipeline.context import RunContext, RunFailed, failure_record, repo_path
from sera_ops.records import EVAL_SPLIT
from sera_ops.sources import repos
from sera_ops.store import history
from sera_ops.store.io import read_json

log = logging.getLogger(__name__)


def select_commits(ctx: RunContext) -> list[str]:
    if existing.is_image_source(ctx.spec):
        chosen = existing.select(ctx.spec, ctx.params.commits or ctx.spec.commits)
    else:
        chosen = repos.select_commits(repo_path(ctx), ctx.params.commits or ctx.spec.commits, ctx.spec.n_commits,
                                        ctx.spec.lookback_days)
    skipped: list[str] = []
    if ctx.incremental:
        seen = history.seen_commits(ctx.store)
        skipped = [c for c in chosen if c in seen]
        chosen = [c for c in chosen if c not in seen]
        log.info("repo %s: incremental run, %d commit(s) already covered by earlier runs", ctx.spec.name,
                 len(skipped))
    ctx.store.write_json(ctx.store.commits, {"source": ctx.spec.source, "commits": chosen,
                                                          "skipped_as_seen": skipped})
    ctx.store.write_json(ctx.store.manifest, {
        "repo": ctx.spec.name, "run_id": ctx.store.run_id, "params": asdict(ctx.params),
        "model_server": ctx.server_name, "model": ctx.server.model, "threshold": ctx.threshold,
        "incremental": ctx.incremental,
        "repo_config": ctx.spec.model_dump(mode="json"), "repo_config_file": str(ctx.spec.source_file)})
    log.info("repo %s: %d commits selected: %s", ctx.spec.name, len(chosen), ", ".join(c[:12] for c in chosen))
    return chosen


def mirror(ctx: RunContext, commits: list[str]) -> dict | None:
    """Stage 1: push the repository and the selected commits to the GitHub organisation (private by default).
    None when the platform has no `github:` section. Commits that do not resolve are left to fail their own tasks."""
    settings = ctx.platform.github
    if settings is None:
        log.info("mirroring is off: platform.yaml has no 'github:' section")
        return None
    if existing.is_image_source(ctx.spec):
        log.info("repo %s: nothing to mirror, its sources are existing images", ctx.spec.name)
        return None
    from sera_ops.sources import mirror as mirroring

    source = repo_path(ctx)
    known = [commit for commit in commits if repos.resolve_commit(source, commit)]
    token = mirroring.resolve_token(settings, ctx.connection_lookup)
    result = mirroring.mirror_repository(source, ctx.spec.name, settings, token, known).to_dict()
    ctx.store.write_json(ctx.store.mirror, result)
    return result


def _snapshot(ctx: RunContext, commit: str) -> repos.RepoSnapshot:
    if existing.is_image_source(ctx.spec):
        return existing.snapshot(ctx.spec, commit, _image_access(ctx), ctx.store.repo_store)
    return repos.snapshot(repo_path(ctx), commit, ctx.store.repo_store.snapshot_dir(commit), ctx.spec.name)


def _image_access(ctx: RunContext) -> existing.ImageAccess:
    return existing.ImageAccess(ctx.platform.images.sandbox, ctx.platform.registry, ctx.registry_password())


@contextmanager
def _commit_failure_recorded(ctx: RunContext, commit: str, stage: str) -> Iterator[None]:
    """A commit's failing build or inventory leaves its reason in images/<commit>.error.json (what `sample` reports
    when no commit is usable) and raises as before; success clears an earlier try's reason."""
    try:
        yield
    except Exception as exc:
        ctx.store.write_json(ctx.store.image_error(commit), asdict(failure_record(stage, exc, ctx.secrets())))
        raise
    ctx.store.image_error(commit).unlink(missing_ok=True)


def build_image(ctx: RunContext, commit: str) -> dict:
    """The commit's image (docker) or local sandbox, recorded in images/<commit>.json."""
    with _commit_failure_recorded(ctx, commit, "build_image"):
        return _build_image(ctx, commit)


def _build_image(ctx: RunContext, commit: str) -> dict:
    if existing.is_image_source(ctx.spec):
        ref = existing.record_image(ctx.spec, commit, _image_access(ctx), ctx.store.repo_store)
        ctx.store.write_json(ctx.store.image(commit), ref.to_dict())
        return ref.to_dict()
    snap = _snapshot(ctx, commit)
    mode = ctx.platform.images.sandbox
    client = images.docker_client() if mode in ("auto", "docker") else None
    if client is None and mode == "docker":
        raise images.ImageBuildError("images.sandbox is 'docker' but no Docker engine answers; start one (see "
                                     "scripts/services.sh) and set DOCKER_HOST, or set images.sandbox to 'auto'")
    if client is None:
        ref = images.local_sandbox(ctx.spec.name, commit, Path(snap.workdir))
    else:
        recipe = images.build_recipe(ctx.platform.images, ctx.spec, ctx.connection_lookup)
        with closing(client):
            ref = images.build_commit_image(client, recipe, commit=commit, snapshot_dir=Path(snap.workdir),
                                            top_level_folder=ctx.spec.top_level_folder,
                                            registry=ctx.platform.registry, registry_password=ctx.registry_password(),
                                            lock_dir=ctx.store.repo_store.locks_dir)
    ctx.store.write_json(ctx.store.image(commit), ref.to_dict())
    return ref.to_dict()


def inventory(ctx: RunContext, commit: str) -> dict:
    """The commit's function inventory, cached per commit across runs; files an earlier commit already had are not
    parsed again (the repository's blob cache)."""
    with _commit_failure_recorded(ctx, commit, "inventory"):
        return _inventory(ctx, commit)


def _inventory(ctx: RunContext, commit: str) -> dict:
    cache = ctx.store.repo_store.inventory_path(commit)
    if cache.exists():
        try:
            found = inventory_from_json(read_json(cache))
            return {"commit": commit, "functions": len(found), "cached": True}
        except InventoryError:
            log.info("inventory cache %s is outdated; recomputing", cache)
    workdir = Path(_snapshot(ctx, commit).workdir)
    folders = detect_code_folders(workdir, ctx.spec.name, ctx.spec.top_level_folder)
    found = list_functions(workdir, folders, ctx.spec.max_folder_depth,
                                     blob_cache=ctx.store.repo_store.blob_cache)
    ctx.store.write_json(cache, inventory_to_json(found))
    log.info("repo %s commit %s: %d functions in %s", ctx.spec.name, commit[:12], len(found), ", ".join(folders))
    return {"commit": commit, "functions": len(found), "cached": False}


def ready_commits(ctx: RunContext) -> tuple[list[str], list[str]]:
    """Commits whose image and inventory both exist, and the ones that failed (in selection order)."""
    chosen = ctx.store.read_json(ctx.store.commits, {"commits": []})["commits"]
    ready = [c for c in chosen if ctx.store.image(c).exists() and ctx.store.repo_store.inventory_path(c).exists()]
    return ready, [c for c in chosen if c not in ready]


def _commit_failure(ctx: RunContext, commit: str) -> str:
    """One line on why a commit is unusable: the first line of its recorded error (the file has the rest)."""
    recorded = ctx.store.read_json(ctx.store.image_error(commit))
    if not recorded:
        return f"commit {commit[:12]}: no image or inventory (its build_image/inventory task did not finish)"
    return f"commit {commit[:12]}: {recorded['stage']}: {recorded['error'].splitlines()[0][:300]}"


def usable_commits(ctx: RunContext) -> tuple[list[str], list[str]]:
    """`ready_commits`, logging why each failed commit is unusable; a run left with none fails, listing them all."""
    ready, failed = ready_commits(ctx)
    reasons = [_commit_failure(ctx, commit) for commit in failed]
    if reasons:
        log.warning("repo %s: skipping %d commit(s) without image or inventory:\n%s", ctx.spec.name, len(failed),
                    "\n".join(reasons))
    if failed and not ready:
        raise RunFailed(f"repo {ctx.spec.name}: no usable commit (none has both an image and a function inventory):\n"
                        + "\n".join(reasons))
    return ready, failed


def sample(ctx: RunContext) -> int:
    """The run's instances: training instances from start functions that are not held out, and evaluation instances
    (split `eval`, ids `<repo>_eval_…`) from those that are (`eval:` settings), both seeded and reproducible."""
    ready, _ = usable_commits(ctx)
    seen = history.seen_functions(ctx.store) if ctx.incremental else set()
    settings = ctx.spec.eval
    found_by_commit = {commit: inventory_from_json(read_json(ctx.store.repo_store.inventory_path(commit)))
                       for commit in ready}
    counted = set(_counted_holdout(ctx, found_by_commit)) if settings.count else set()
    train, held, prints = {}, {}, {}
    for commit, found in found_by_commit.items():
        snapshot = ctx.store.repo_store.snapshot_dir(commit)
        keyed = {(commit, f.key): history.fingerprint(snapshot, f) for f in found}
        fresh = [f for f in found if keyed[(commit, f.key)] not in seen]
        held[commit] = [f for f in fresh if is_held_out(settings, commit, f, counted)]
        train[commit] = [f for f in fresh if f not in held[commit]]
        prints.update(keyed)
    chosen = sample_instances(ctx.spec.name, train, ctx.function_limit, ctx.spec.insts_per_fn, ctx.spec.seed)
    if settings.holds_out:
        tasks = sample_instances(f"{ctx.spec.name}_{EVAL_SPLIT}", held, tasks_per_run(settings, ctx.function_limit),
                                 1, ctx.spec.seed)
        chosen += [replace(task, repo=ctx.spec.name, split=EVAL_SPLIT) for task in tasks]
        log.info("repo %s: %d of %d start functions held out, %d evaluation instance(s) sampled", ctx.spec.name,
                 sum(map(len, held.values())), sum(map(len, found_by_commit.values())), len(tasks))
    ctx.store.write_json(ctx.store.fingerprints,
                         {i.instance_id: prints[(i.commit, f"{i.start_fn_file}::{i.start_fn}")] for i in chosen})
    ctx.store.write_json(ctx.store.instances, [i.to_dict() for i in chosen])
    if not chosen:
        log.info("repo %s: nothing new to roll out", ctx.spec.name)
    return len(chosen)


def _counted_holdout(ctx: RunContext, found_by_commit: dict[str, list]) -> list[str]:
    """`eval.count` held-out function keys: the repository's record, topped up from this run's inventories."""
    record = ctx.store.repo_store.holdout
    recorded = ctx.store.read_json(record, {}).get("keys", [])
    keys = {f.key for found in found_by_commit.values() for f in found}
    chosen = choose_counted(ctx.spec.eval, keys, recorded)
    if chosen != recorded:
        ctx.store.write_json(record, {"keys": chosen, "seed": ctx.spec.eval.seed, "run_id": ctx.store.run_id})
    return chosen
