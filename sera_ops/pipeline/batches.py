"""The batch engine: each instance of a batch through rollout one, synthesis, rollout two and verification.

Instance-level failures are written next to the instance (`<stage>.error.json`) and never stop the other instances; a
batch task fails only when fewer than `batching.min_success_fraction` of its instances got through, so that Airflow
retries it and the retry redoes only what is missing. A batch whose model server does not answer moves to another.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from operator import attrgetter

from sera_ops import prompts
from sera_ops.build import images
from sera_ops.pipeline import planner
from sera_ops.pipeline.context import BatchFailed, RunContext, batch_plan, failure_record
from sera_ops.records import Duplicate, Instance, Judgement, RolloutOne
from sera_ops.rollouts.episode import EpisodeSpec, run_episode
from sera_ops.rollouts.teacher import TeacherUnreachable, preflight
from sera_ops.settings import resolve_secret
from sera_ops.store.io import StorePath, claim, read_json
from sera_ops.store.layout import InstanceFiles
from sera_ops.synth import demo_issues, judge, writer
from sera_ops.verify import patch_fingerprint, verify

log = logging.getLogger(__name__)


def make_batches(ctx: RunContext) -> list[str]:
    """The run's batches, each with its model server (see `planner.plan_servers`); written once, so a retried or
    cleared task keeps the same split and server."""
    existing = batch_plan(ctx)
    if existing:
        return list(existing)
    instances = [Instance.from_dict(r) for r in ctx.store.instance_records()]
    settings = ctx.spec.batching
    servers = {name: ctx.platform.server(name) for name in ctx.server_names}
    batches = planner.plan_servers(instances, settings.batch_size, settings.max_batches, servers)
    ctx.store.write_json(ctx.store.batches, batches)
    return list(batches)


def batches_on(ctx: RunContext, lane: str) -> list[str]:
    """The batches the DAG's batch group of `lane` (one of the repository's `model_servers`, whose pool it uses) runs:
    those assigned to it, and in the first lane those on a server the repository does not list (a run param's)."""
    lanes = ctx.spec.model_servers
    return [batch_id for batch_id, batch in batch_plan(ctx).items()
            if (batch["server"] if batch["server"] in lanes else lanes[0]) == lane]


def _instances(ctx: RunContext, batch_id: str) -> list[Instance]:
    wanted = set(batch_plan(ctx).get(batch_id, {}).get("instances", []))
    return [Instance.from_dict(r) for r in ctx.store.instance_records() if r["instance_id"] in wanted]


def _image(ctx: RunContext, commit: str) -> images.ImageRef:
    return images.ImageRef.from_dict(read_json(ctx.store.image(commit)))


@dataclass(frozen=True)
class Step:
    """One stage of one instance. It is due when `eligible` says so and done when its `output` file exists (None:
    cheap, always redone); `work` writes the output."""

    name: str
    output: Callable[[InstanceFiles], StorePath] | None
    eligible: Callable[[Instance], bool]
    work: Callable[[Instance], None]


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

    def flow(instance: Instance) -> str | None:
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
                failure = failure_record(step.name, exc, secrets)
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


def _always(_: Instance) -> bool:
    return True


def _rollout_one_step(ctx: RunContext) -> Step:
    """SERA's rollout one: an agent on a vague report around the start function, judged; up to max_attempts tries,
    each with another rollout-one template, until the judge calls the patch good."""
    secrets = ctx.secrets()
    settings = ctx.spec.rollout

    def work(instance: Instance) -> None:
        with ctx.spending(instance.instance_id, "rollout1") as budget:
            client = ctx.synth_client(budget)
            attempts = []
            for attempt in range(settings.max_attempts):
                template = writer.pick_distinct(prompts.ROLLOUT_ONE_COUNT, ctx.spec.seed, instance.instance_id,
                                               "template", attempt=attempt)
                task = prompts.render_rollout_one(template, instance.start_fn, instance.start_fn_file)
                traj_path = ctx.store.instance(instance.instance_id).attempt_trajectory(attempt)
                rollout = run_episode(EpisodeSpec(
                    instance_id=instance.instance_id, stage=1, attempt=attempt, task=task,
                    image=_image(ctx, instance.commit), teacher=ctx.agent_teacher(budget), settings=settings,
                    trajectory_path=traj_path, secrets=secrets, confinement=ctx.confinement(),
                    template_index=template))
                judgement = Judgement(is_good_patch=False, answer=None, calls=0)
                if rollout.patch.strip():
                    steps = judge.agent_steps(read_json(traj_path), ctx.spec.synth.observation_chars)
                    judgement = judge.judge_patch(client, ctx.spec.synth, _first_user_message(traj_path), steps,
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
    fingerprint = patch_fingerprint(rollout_one.final.patch)
    owner = claim(ctx.store.patch_claim(fingerprint), instance_id)
    if owner == instance_id:
        return False
    ctx.store.write_duplicate(instance_id, Duplicate(duplicate_of=owner, patch=fingerprint))
    return True


def _synth_step(ctx: RunContext) -> Step:
    """The synthetic PR for every judged-good rollout one that no other instance already made (duplicate patches are
    collapsed here, before any teacher call), in the style of a demonstration issue."""
    pool = demo_issues.pool_for(ctx.spec.synth, ctx.platform.github, ctx.connection_lookup,
                                ctx.store.repo_store.demo_issues_cache)

    def eligible(instance: Instance) -> bool:
        result = ctx.store.rollout_one(instance.instance_id)
        return bool(result and result.is_good_patch) and not _is_duplicate(ctx, instance.instance_id, result)

    def work(instance: Instance) -> None:
        final = ctx.store.rollout_one(instance.instance_id).final
        steps = judge.agent_steps(ctx.store.trajectory(instance.instance_id, final.trajectory_file),
                                  ctx.spec.synth.observation_chars)
        with ctx.spending(instance.instance_id, "synth") as budget:
            client = ctx.synth_client(budget)
            result = writer.write_synthetic_pr(client, ctx.spec.synth, instance.instance_id, steps, final.patch, pool,
                                              ctx.spec.seed)
        ctx.store.write_synth(instance.instance_id, replace(result, writer_usage=client.usage.to_dict()))

    return Step("synth", attrgetter("synth"), eligible, work)


def _rollout_two_step(ctx: RunContext) -> Step:
    """A fresh agent on the synthetic PR, from the same pristine image (not for held-out instances)."""
    secrets = ctx.secrets()

    def eligible(instance: Instance) -> bool:
        if instance.held_out:  # an evaluation task: its PR is the problem statement, rollout one's patch the answer
            return False
        result = ctx.store.synth(instance.instance_id)
        return bool(result and result.synth_pr)

    def work(instance: Instance) -> None:
        pr = ctx.store.synth(instance.instance_id).synth_pr
        with ctx.spending(instance.instance_id, "rollout2") as budget:
            rollout = run_episode(EpisodeSpec(
                instance_id=instance.instance_id, stage=2, attempt=0, task=pr, image=_image(ctx, instance.commit),
                teacher=ctx.agent_teacher(budget), settings=ctx.spec.rollout,
                trajectory_path=ctx.store.instance(instance.instance_id).rollout_two_trajectory, secrets=secrets,
                confinement=ctx.confinement()))
        ctx.store.write_rollout_two(instance.instance_id, rollout)

    return Step("rollout2", attrgetter("rollout_two"), eligible, work)


def _verify_step(ctx: RunContext) -> Step:
    """Changed-line recall of rollout two's patch against rollout one's; cheap, so always recomputed (the
    threshold may differ between runs)."""

    def eligible(instance: Instance) -> bool:
        return ctx.store.instance(instance.instance_id).rollout_two.exists()

    def work(instance: Instance) -> None:
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
