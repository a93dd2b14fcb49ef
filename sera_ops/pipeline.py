"""The SERA stages as idempotent steps over the run store; the DAG calls each one from a task, `sera run` in a loop.

Every step reads its inputs from and writes its outputs to the store, and skips work whose output already exists, so
Airflow retries and cleared tasks replace SERA's manual stage resumes. Instance-level failures are written next to the
instance (`<stage>.error.json`) and never stop the other instances; a batch step fails only when fewer than
`batching.min_success_fraction` of its instances got through, so that Airflow retries it. A commit's failed build or
inventory is recorded as `images/<commit>.error.json`, so that a run left with no usable commit can say why.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field, replace
from operator import attrgetter
from pathlib import Path
from typing import Any

from sera_ops import dataset, demo_issues, functions, history, image_sources, images, planner, prompts, sources, synth
from sera_ops.config import ModelServer, PlatformConfig, RepoSpec, SecretLookup, SecretRef, resolve_secret
from sera_ops.errors import PermanentError
from sera_ops.redaction import redact
from sera_ops.rollouts import run_episode
from sera_ops.store import (
    Duplicate,
    InstanceError,
    InstanceFiles,
    NotStarted,
    RepoStore,
    RolloutOne,
    RunStore,
    StorePath,
    claim,
    read_json,
)
from sera_ops.teachers import Budget, SpendLedger, TeacherClient, TeacherUnreachable, preflight, spend_ledger
from sera_ops.verify import verify

log = logging.getLogger(__name__)


class BatchFailed(RuntimeError):
    """Too few instances of a batch got through a stage; Airflow retries the task, which redoes only the failures."""


class RunFailed(PermanentError, RuntimeError):
    """The run has nothing to go on (no usable commit, no instance got through); the message says why."""


class InvalidParam(PermanentError, ValueError):
    """A run parameter names something that is not configured."""


class SourceUnreachable(sources.SourceError):
    """Cloning or fetching a remote source failed: the network may heal, so this is retried."""

    permanent = False


@dataclass(frozen=True)
class RunParams:
    """Per-run overrides (DAG params / REST conf / CLI flags); None means "as configured"."""

    commits: list[str] = field(default_factory=list)
    max_functions: int | None = None
    model_server: str | None = None
    model_servers: list[str] = field(default_factory=list)
    threshold: float | None = None
    incremental: bool | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RunParams:
        data = data or {}
        return cls(commits=list(data.get("commits") or []), max_functions=data.get("max_functions") or None,
                   model_server=data.get("model_server") or None,
                   model_servers=list(data.get("model_servers") or []), threshold=data.get("threshold"),
                   incremental=data.get("incremental"))


@dataclass
class RunContext:
    platform: PlatformConfig
    spec: RepoSpec
    store: RunStore
    params: RunParams = field(default_factory=RunParams)
    connection_lookup: SecretLookup | None = None
    batch_server: str | None = None
    """The server one batch task talks to (`for_batch`); None: the run's first."""

    @classmethod
    def create(cls, platform: PlatformConfig, spec: RepoSpec, run_id: str, params: RunParams | None = None,
               connection_lookup: SecretLookup | None = None, storage_root: StorePath | None = None) -> RunContext:
        """`storage_root`: the platform's, unless the caller opened it otherwise (Airflow: with its connection)."""
        params = params or RunParams()
        if params.model_server and params.model_servers:
            raise InvalidParam("params 'model_server' and 'model_servers' both given; give one of them")
        named = [("model_server", params.model_server)] + [("model_servers", name) for name in params.model_servers]
        for param, server in named:
            try:
                if server:
                    platform.server(server)  # fail fast, naming the configured servers
            except ValueError as exc:
                raise InvalidParam(f"param '{param}': {exc}") from None
        repo = RepoStore(storage_root or platform.storage_root, spec.name, platform.local_cache_dir)
        return cls(platform, spec, repo.run(run_id), params, connection_lookup)

    @property
    def server_names(self) -> list[str]:
        """The model servers this run spreads its batches over, in order of preference for moved batches."""
        if self.params.model_servers:
            return self.params.model_servers
        if self.params.model_server:
            return [self.params.model_server]
        return self.spec.model_servers or [self.spec.model_server or self.platform.defaults.model_server]

    @property
    def server_name(self) -> str:
        return self.batch_server or self.server_names[0]

    def for_batch(self, batch_id: str) -> RunContext:
        """This context on the server `make_batches` assigned to the batch (the run's first for an unknown batch)."""
        return replace(self, batch_server=_batch_plan(self).get(batch_id, {}).get("server"))

    @property
    def server(self) -> ModelServer:
        return self.platform.server(self.server_name)

    @property
    def episodes(self) -> int:
        """Instances a batch task works on at once: enough to keep every request slot of the server busy."""
        return self.server.concurrency * self.server.episodes_per_slot

    @property
    def threshold(self) -> float:
        return self.spec.verify.threshold if self.params.threshold is None else self.params.threshold

    @property
    def incremental(self) -> bool:
        """Skip what earlier runs covered: on by default for scheduled repositories (nightly refreshes)."""
        if self.params.incremental is not None:
            return self.params.incremental
        return self.spec.incremental if self.spec.incremental is not None else self.spec.schedule is not None

    @property
    def function_limit(self) -> int:
        return self.params.max_functions or self.spec.fns_per_repo

    def confinement(self) -> dict[str, Any]:
        """How this run's episodes are confined: the repository's limits, the run label (to reap orphans), and the
        platform's policy for local episodes without bubblewrap."""
        return {"limits": self.spec.sandbox, "run_id": self.store.run_id,
                "allow_unconfined_local": self.platform.images.allow_unconfined_local}

    def api_key(self) -> str | None:
        return resolve_secret(self.server.api_key, self.connection_lookup)

    def synth_client(self, budget: Budget | None = None) -> TeacherClient:
        """The judge's and PR writer's client for one instance (its usage is the instance's own, charged to its
        budget): on `synth.model_server` when the repository sets one, else on the agent's server (including a
        `model_server` param's)."""
        name = self.spec.synth.model_server or self.server_name
        server = self.platform.server(name)
        return TeacherClient(server, resolve_secret(server.api_key, self.connection_lookup), name=name, budget=budget)

    @property
    def ledger(self) -> SpendLedger:
        return spend_ledger(self.store.spend_dir)

    @contextmanager
    def spending(self, instance_id: str, stage: str) -> Iterator[Budget]:
        """The instance's budget for one stage (`cost_limits.per_instance_usd`, less what its earlier stages and
        tries spent); what the stage spent goes to the run's ledger on the way out, also when it fails."""
        limit = self.spec.cost_limits.per_instance_usd
        budget = Budget(limit, self.ledger.spent(instance_id) if limit else 0.0)
        try:
            yield budget
        finally:
            self.ledger.record(instance_id, stage, budget.added_usd)

    def may_start(self, instance_id: str) -> bool:
        """Whether the run's spend leaves room to start this instance (`cost_limits.per_run_usd`); when not, its
        `not_started.json` and the log say why. Instances already under way finish, within their own limits."""
        limit = self.spec.cost_limits.per_run_usd
        if limit is None:
            return True
        spent = self.ledger.total()
        if spent < limit:
            self.store.clear_not_started(instance_id)  # from an earlier try under a lower limit
            return True
        reason = f"the run has spent ${spent:.4f}, its limit is ${limit:g} (cost_limits.per_run_usd)"
        log.warning("instance %s not started: %s", instance_id, reason)
        self.store.write_not_started(instance_id, NotStarted(reason=reason, spent_usd=round(spent, 6)))
        return False

    def registry_password(self) -> str | None:
        return resolve_secret(self.platform.registry.credentials, self.connection_lookup)

    def secrets(self) -> list[str]:
        """Every secret this run can see, for redaction of anything it writes."""
        values = [resolve_secret(server.api_key, self.connection_lookup)
                  for server in self.platform.model_servers.values()]
        values.append(self.registry_password())
        if self.platform.github:
            values.append(resolve_secret(self.platform.github.token, self.connection_lookup))
        for build_env in (self.platform.images.build_env, self.spec.install_env):
            values += [resolve_secret(ref, self.connection_lookup) for ref in build_env.values()
                       if isinstance(ref, SecretRef)]
        return [value for value in values if value]


# ---------------------------------------------------------------- commits, images, inventory, instances


def select_commits(ctx: RunContext) -> list[str]:
    if image_sources.is_image_source(ctx.spec):
        chosen = image_sources.select(ctx.spec, ctx.params.commits or ctx.spec.commits)
    else:
        chosen = sources.select_commits(_repo_path(ctx), ctx.params.commits or ctx.spec.commits, ctx.spec.n_commits,
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
    if image_sources.is_image_source(ctx.spec):
        log.info("repo %s: nothing to mirror, its sources are existing images", ctx.spec.name)
        return None
    from sera_ops import mirror as mirroring

    repo_path = _repo_path(ctx)
    known = [commit for commit in commits if sources.resolve_commit(repo_path, commit)]
    token = mirroring.resolve_token(settings, ctx.connection_lookup)
    result = mirroring.mirror_repository(repo_path, ctx.spec.name, settings, token, known).to_dict()
    ctx.store.write_json(ctx.store.mirror, result)
    return result


def _repo_path(ctx: RunContext) -> Path:
    """The source's git directory. A local path that is not a repository is a permanent error; a clone or fetch of a
    remote source may fail for the network's sake, so it is marked for retrying."""
    try:
        return sources.materialize(ctx.spec.source, ctx.store.repo_store.sources_dir)
    except sources.SourceError as exc:
        if ctx.spec.source.startswith("bundled:") or Path(ctx.spec.source).is_absolute():
            raise
        raise SourceUnreachable(str(exc)) from exc


def _snapshot(ctx: RunContext, commit: str) -> sources.RepoSnapshot:
    if image_sources.is_image_source(ctx.spec):
        return image_sources.snapshot(ctx, commit)
    return sources.snapshot(_repo_path(ctx), commit, ctx.store.repo_store.snapshot_dir(commit), ctx.spec.name)


def _failure(stage: str, exc: Exception, secrets: list[str]) -> InstanceError:
    """Why `stage` failed (redacted), for whoever reads the run later."""
    return InstanceError(stage=stage, error=redact(f"{type(exc).__name__}: {exc}", secrets), time=time.time())


@contextmanager
def _commit_failure_recorded(ctx: RunContext, commit: str, stage: str) -> Iterator[None]:
    """A commit's failing build or inventory leaves its reason in images/<commit>.error.json (what `sample` reports
    when no commit is usable) and raises as before; success clears an earlier try's reason."""
    try:
        yield
    except Exception as exc:
        ctx.store.write_json(ctx.store.image_error(commit), asdict(_failure(stage, exc, ctx.secrets())))
        raise
    ctx.store.image_error(commit).unlink(missing_ok=True)


def build_image(ctx: RunContext, commit: str) -> dict:
    """The commit's image (docker) or local sandbox, recorded in images/<commit>.json."""
    with _commit_failure_recorded(ctx, commit, "build_image"):
        return _build_image(ctx, commit)


def _build_image(ctx: RunContext, commit: str) -> dict:
    if image_sources.is_image_source(ctx.spec):
        return image_sources.record_image(ctx, commit)
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
            found = functions.inventory_from_json(read_json(cache))
            return {"commit": commit, "functions": len(found), "cached": True}
        except functions.InventoryError:
            log.info("inventory cache %s is outdated; recomputing", cache)
    workdir = Path(_snapshot(ctx, commit).workdir)
    folders = functions.detect_code_folders(workdir, ctx.spec.name, ctx.spec.top_level_folder)
    found = functions.list_functions(workdir, folders, ctx.spec.max_folder_depth,
                                     blob_cache=ctx.store.repo_store.blob_cache)
    ctx.store.write_json(cache, functions.inventory_to_json(found))
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
    ready, _ = usable_commits(ctx)
    seen = history.seen_functions(ctx.store) if ctx.incremental else set()
    by_commit, prints = {}, {}
    for commit in ready:
        snapshot = ctx.store.repo_store.snapshot_dir(commit)
        found = functions.inventory_from_json(read_json(ctx.store.repo_store.inventory_path(commit)))
        keyed = {(commit, f.key): history.fingerprint(snapshot, f) for f in found}
        by_commit[commit] = [f for f in found if keyed[(commit, f.key)] not in seen]
        prints.update(keyed)
    chosen = functions.sample_instances(ctx.spec.name, by_commit, ctx.function_limit, ctx.spec.insts_per_fn,
                                        ctx.spec.seed)
    ctx.store.write_json(ctx.store.fingerprints,
                         {i.instance_id: prints[(i.commit, f"{i.start_fn_file}::{i.start_fn}")] for i in chosen})
    ctx.store.write_json(ctx.store.instances, [i.to_dict() for i in chosen])
    if not chosen:
        log.info("repo %s: nothing new to roll out", ctx.spec.name)
    return len(chosen)


def make_batches(ctx: RunContext) -> list[str]:
    """The run's batches, each with its model server (see `planner.plan_servers`); written once, so a retried or
    cleared task keeps the same split and server."""
    existing = _batch_plan(ctx)
    if existing:
        return list(existing)
    instances = [functions.Instance.from_dict(r) for r in ctx.store.instance_records()]
    settings = ctx.spec.batching
    servers = {name: ctx.platform.server(name) for name in ctx.server_names}
    batches = planner.plan_servers(instances, settings.batch_size, settings.max_batches, servers)
    ctx.store.write_json(ctx.store.batches, batches)
    return list(batches)


def _batch_plan(ctx: RunContext) -> dict[str, dict]:
    """The run's batch plan: batch id → {"server", "instances"}."""
    return ctx.store.read_json(ctx.store.batches, {})


def batches_on(ctx: RunContext, lane: str) -> list[str]:
    """The batches the DAG's batch group of `lane` (one of the repository's `model_servers`, whose pool it uses) runs:
    those assigned to it, and in the first lane those on a server the repository does not list (a run param's)."""
    lanes = ctx.spec.model_servers
    return [batch_id for batch_id, batch in _batch_plan(ctx).items()
            if (batch["server"] if batch["server"] in lanes else lanes[0]) == lane]


# ---------------------------------------------------------------- per-batch stages


def _instances(ctx: RunContext, batch_id: str) -> list[functions.Instance]:
    wanted = set(_batch_plan(ctx).get(batch_id, {}).get("instances", []))
    return [functions.Instance.from_dict(r) for r in ctx.store.instance_records() if r["instance_id"] in wanted]


def _image(ctx: RunContext, commit: str) -> images.ImageRef:
    return images.ImageRef.from_dict(read_json(ctx.store.image(commit)))


@dataclass(frozen=True)
class Step:
    """One stage of one instance. It is due when `eligible` says so and done when its `output` file exists (None:
    cheap, always redone); `work` writes the output."""

    name: str
    output: Callable[[InstanceFiles], StorePath] | None
    eligible: Callable[[functions.Instance], bool]
    work: Callable[[functions.Instance], None]


@dataclass
class _Tally:
    """Per-stage counts of a batch task, for its log and summary."""

    counts: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, stage: str, outcome: str) -> None:
        with self.lock:
            self.counts[(stage, outcome)] += 1

    def summary(self, steps: list[Step]) -> dict[str, dict[str, int]]:
        return {step.name: {outcome: self.counts[(step.name, outcome)] for outcome in ("already_done", "ran", "failed")}
                for step in steps}


def _for_each(ctx: RunContext, batch_id: str, steps: list[Step]) -> dict:
    """Take each instance of the batch through `steps` in order, the model server's concurrency of instances at a
    time and no barrier between stages: an instance starts rollout two as soon as its own PR exists, so the teacher
    stays busy until the last instance. A step whose output exists is skipped (a retry redoes only what is missing);
    a failure is recorded next to the instance and ends that instance's flow, never the others'. The task fails
    (and Airflow retries it) only when fewer than `min_success_fraction` of its instances got through."""
    instances = _instances(ctx, batch_id)
    secrets, tally = ctx.secrets(), _Tally()

    def flow(instance: functions.Instance) -> str | None:
        if not ctx.may_start(instance.instance_id):
            return None
        for step in steps:
            if not step.eligible(instance):
                continue
            if step.output and step.output(ctx.store.instance(instance.instance_id)).exists():
                tally.add(step.name, "already_done")
                continue
            tally.add(step.name, "ran")
            try:
                step.work(instance)
            except Exception as exc:
                failure = _failure(step.name, exc, secrets)
                ctx.store.write_error(instance.instance_id, failure)
                log.error("instance %s: %s failed: %s", instance.instance_id, step.name, failure.error)
                tally.add(step.name, "failed")
                return f"{step.name}: {failure.error}"
            ctx.store.clear_error(instance.instance_id, step.name)
        return None

    started, errors = time.monotonic(), []
    every = max(1, len(instances) // 10)
    with ThreadPoolExecutor(max_workers=ctx.episodes, thread_name_prefix=f"{batch_id}-") as pool:
        for done, error in enumerate(as_completed(pool.submit(flow, i) for i in instances), start=1):
            if error.result():
                errors.append(error.result())
            if done % every == 0 or done == len(instances):
                rate = done / max(time.monotonic() - started, 1e-9)
                log.info("batch %s: %d/%d instances through %s (%d failed), %.2f/s, ETA %.0f s", batch_id, done,
                         len(instances), "+".join(step.name for step in steps), len(errors), rate,
                         (len(instances) - done) / rate)
    summary = {"batch": batch_id, "instances": len(instances), "failed": len(errors), **tally.summary(steps)}
    log.info("batch %s: %s", batch_id, summary)
    if instances and (len(instances) - len(errors)) / len(instances) < ctx.spec.batching.min_success_fraction:
        raise BatchFailed(f"batch {batch_id}: only {len(instances) - len(errors)}/{len(instances)} instances got "
                          f"through (need {ctx.spec.batching.min_success_fraction:.0%}); first error: {errors[0]}")
    return summary


def _always(_: functions.Instance) -> bool:
    return True


def _rollout_one_step(ctx: RunContext) -> Step:
    """SERA's rollout one: an agent on a vague report around the start function, judged; up to max_attempts tries,
    each with another rollout-one template, until the judge calls the patch good."""
    secrets = ctx.secrets()
    settings = ctx.spec.rollout

    def work(instance: functions.Instance) -> None:
        with ctx.spending(instance.instance_id, "rollout1") as budget:
            client = ctx.synth_client(budget)
            attempts = []
            for attempt in range(settings.max_attempts):
                template = synth.pick_distinct(prompts.ROLLOUT_ONE_COUNT, ctx.spec.seed, instance.instance_id,
                                               "template", attempt=attempt)
                task = prompts.render_rollout_one(template, instance.start_fn, instance.start_fn_file)
                traj_path = ctx.store.instance(instance.instance_id).attempt_trajectory(attempt)
                rollout = run_episode(instance_id=instance.instance_id, stage=1, attempt=attempt, task=task,
                                      image=_image(ctx, instance.commit), server=ctx.server, api_key=ctx.api_key(),
                                      settings=settings, trajectory_path=traj_path, secrets=secrets,
                                      template_index=template, server_name=ctx.server_name, budget=budget,
                                      **ctx.confinement())
                judgement = synth.Judgement(is_good_patch=False, answer=None, calls=0)
                if rollout.patch.strip():
                    steps = synth.agent_steps(read_json(traj_path), ctx.spec.synth.observation_chars)
                    judgement = synth.judge_patch(client, ctx.spec.synth, _first_user_message(traj_path), steps,
                                                  rollout.patch)
                attempts.append({"rollout": rollout.to_dict(), "judgement": asdict(judgement)})
                if judgement.is_good_patch or budget.exceeded:
                    break
            ctx.store.write_rollout_one(instance.instance_id, RolloutOne(
                final=rollout, is_good_patch=judgement.is_good_patch, attempts=attempts,
                judge_usage=client.usage.to_dict(), cost_limited=budget.exceeded))

    return Step("rollout1", attrgetter("rollout_one"), _always, work)


def _first_user_message(traj_path: StorePath) -> str:
    messages = read_json(traj_path).get("messages", [])
    return next((m.get("content", "") for m in messages if m.get("role") == "user"), "")


def _is_duplicate(ctx: RunContext, instance_id: str, rollout_one: RolloutOne) -> bool:
    """Whether another instance of the run already owns this rollout-one patch (same changed lines of the same files):
    then no teacher call is spent on it, and `duplicate.json` says whose it is. The first to claim a patch owns it."""
    fingerprint = synth.patch_fingerprint(rollout_one.final.patch)
    owner = claim(ctx.store.patch_claim(fingerprint), instance_id)
    if owner == instance_id:
        return False
    ctx.store.write_duplicate(instance_id, Duplicate(duplicate_of=owner, patch=fingerprint))
    return True


def _synth_step(ctx: RunContext) -> Step:
    """The synthetic PR for every judged-good rollout one that no other instance already made (duplicate patches are
    collapsed here, before any teacher call), in the style of a demonstration issue."""
    pool = demo_issues.pool_for(ctx)

    def eligible(instance: functions.Instance) -> bool:
        result = ctx.store.rollout_one(instance.instance_id)
        return bool(result and result.is_good_patch) and not _is_duplicate(ctx, instance.instance_id, result)

    def work(instance: functions.Instance) -> None:
        final = ctx.store.rollout_one(instance.instance_id).final
        steps = synth.agent_steps(ctx.store.trajectory(instance.instance_id, final.trajectory_file),
                                  ctx.spec.synth.observation_chars)
        with ctx.spending(instance.instance_id, "synth") as budget:
            client = ctx.synth_client(budget)
            result = synth.write_synthetic_pr(client, ctx.spec.synth, instance.instance_id, steps, final.patch, pool,
                                              ctx.spec.seed)
        ctx.store.write_synth(instance.instance_id, replace(result, writer_usage=client.usage.to_dict()))

    return Step("synth", attrgetter("synth"), eligible, work)


def _rollout_two_step(ctx: RunContext) -> Step:
    """A fresh agent on the synthetic PR, from the same pristine image."""
    secrets = ctx.secrets()

    def eligible(instance: functions.Instance) -> bool:
        result = ctx.store.synth(instance.instance_id)
        return bool(result and result.synth_pr)

    def work(instance: functions.Instance) -> None:
        pr = ctx.store.synth(instance.instance_id).synth_pr
        with ctx.spending(instance.instance_id, "rollout2") as budget:
            rollout = run_episode(instance_id=instance.instance_id, stage=2, attempt=0, task=pr,
                                  image=_image(ctx, instance.commit), server=ctx.server, api_key=ctx.api_key(),
                                  settings=ctx.spec.rollout,
                                  trajectory_path=ctx.store.instance(instance.instance_id).rollout_two_trajectory,
                                  secrets=secrets, server_name=ctx.server_name, budget=budget, **ctx.confinement())
        ctx.store.write_rollout_two(instance.instance_id, rollout)

    return Step("rollout2", attrgetter("rollout_two"), eligible, work)


def _verify_step(ctx: RunContext) -> Step:
    """Changed-line recall of rollout two's patch against rollout one's; cheap, so always recomputed (the
    threshold may differ between runs)."""

    def eligible(instance: functions.Instance) -> bool:
        return ctx.store.instance(instance.instance_id).rollout_two.exists()

    def work(instance: functions.Instance) -> None:
        two = ctx.store.rollout_two(instance.instance_id)
        one = ctx.store.rollout_one(instance.instance_id).final
        ctx.store.write_verdict(instance.instance_id, verify(instance.instance_id, one.patch, two.patch, ctx.threshold))

    return Step("verify", None, eligible, work)


def _serving(ctx: RunContext, batch_id: str) -> RunContext:
    """The batch's context on a teacher that answers: its assigned server, else the next of the run's servers that
    does, so that a dead server's batches move to the others (a warning names it, `moves/<batch>.json` records the
    move). Fails fast, naming the server and its URL, when none answers or the assigned one refuses the key, not after
    every instance has used up its retries."""
    assigned = ctx.for_batch(batch_id).server_name
    names = ctx.server_names
    start = names.index(assigned) if assigned in names else 0
    dead: list[TeacherUnreachable] = []
    for name in [assigned, *(name for name in names[start:] + names[:start] if name != assigned)]:
        candidate = replace(ctx, batch_server=name)
        try:
            preflight(name, candidate.server, candidate.api_key())
        except TeacherUnreachable as exc:
            if exc.permanent and name == assigned:
                raise
            log.warning("batch %s: %s", batch_id, exc)
            dead.append(exc)
            continue
        move = ctx.store.move(batch_id)
        if name == assigned:
            move.unlink(missing_ok=True)
        else:
            log.warning("batch %s: moved from model server '%s' at %s, which does not answer, to '%s' at %s",
                        batch_id, assigned, ctx.platform.server(assigned).base_url, name, candidate.server.base_url)
            ctx.store.write_json(move, {"batch": batch_id, "assigned": assigned, "server": name,
                                        "reason": str(dead[0]), "time": time.time()})
        synth = ctx.spec.synth.model_server
        if synth and synth != name:
            synth_server = ctx.platform.server(synth)
            preflight(synth, synth_server, resolve_secret(synth_server.api_key, ctx.connection_lookup))
        return candidate
    raise dead[0]


def rollouts(ctx: RunContext, batch_id: str) -> dict:
    """The batch task: every instance through rollout one (judged), the synthetic PR, rollout two and verification."""
    ctx = _serving(ctx, batch_id)
    return _for_each(ctx, batch_id, [_rollout_one_step(ctx), _synth_step(ctx), _rollout_two_step(ctx),
                                     _verify_step(ctx)])


def _one_stage(ctx: RunContext, batch_id: str, step: Step) -> dict:
    """One stage of a batch on its own (tests, benchmarks, redoing a stage by hand): its counts."""
    return {"batch": batch_id, "stage": step.name, **_for_each(ctx, batch_id, [step])[step.name]}


def rollout_one(ctx: RunContext, batch_id: str) -> dict:
    ctx = _serving(ctx, batch_id)
    return _one_stage(ctx, batch_id, _rollout_one_step(ctx))


def synthesize(ctx: RunContext, batch_id: str) -> dict:
    ctx = _serving(ctx, batch_id)
    return _one_stage(ctx, batch_id, _synth_step(ctx))


def rollout_two(ctx: RunContext, batch_id: str) -> dict:
    ctx = _serving(ctx, batch_id)
    return _one_stage(ctx, batch_id, _rollout_two_step(ctx))


def verify_batch(ctx: RunContext, batch_id: str) -> dict:
    return _one_stage(ctx, batch_id, _verify_step(ctx))


# ---------------------------------------------------------------- dataset


def assemble(ctx: RunContext) -> dict:
    """The dataset and its statistics. A run with no usable commit, no sample, or instances but no record because
    they failed, fails here, naming the stage and the most common error; failures beside records are only counted."""
    ready, failed = usable_commits(ctx)
    if not ctx.store.instances.exists():
        raise RunFailed(f"repo {ctx.spec.name}: no instances were sampled; see the sample_instances task")
    header = {
        "repo": ctx.spec.name, "run_id": ctx.store.run_id, "model_server": ctx.server_name,
        "threshold": ctx.threshold, "format": ctx.spec.postprocess.format,
        "commits": {"selected": len(ready) + len(failed), "ready": len(ready), "failed": failed},
        "functions": sum(len(functions.inventory_from_json(read_json(ctx.store.repo_store.inventory_path(c))))
                         for c in ready),
    }
    stats = dataset.assemble(ctx.store, ctx.spec.postprocess, header)
    failures = stats["failed"]
    if failures["instances"] and not any(stats["records"].values()):
        error, count = next(iter(failures["by_error"].items()))
        raise RunFailed(f"repo {ctx.spec.name}: no records; {failures['instances']} of {stats['instances']} "
                        f"instance(s) failed, most often ({count}) at {error}")
    return stats


def publish(ctx: RunContext) -> dict | None:
    return dataset.publish(ctx.store)


def prepare(ctx: RunContext) -> list[str]:
    """Everything before the rollouts, in one process: commits, mirror, images and inventories (a failing commit is
    logged and left out, as its mapped task would fail alone), the sample and its batches."""
    commits = select_commits(ctx)
    mirror(ctx, commits)
    for commit in commits:
        try:
            build_image(ctx, commit)
            inventory(ctx, commit)
        except Exception:
            log.exception("repo %s commit %s failed; continuing with the others", ctx.spec.name, commit[:12])
    sample(ctx)
    return make_batches(ctx)


def run_all(ctx: RunContext) -> dict:
    """The whole pipeline in one process (what the DAG does, without a scheduler)."""
    for batch_id in prepare(ctx):
        rollouts(ctx, batch_id)
    stats = assemble(ctx)
    publish(ctx)
    return stats
