"""A run's context: its settings, per-run parameters, store, secrets and spend, and the errors that end a run.

Stages take a `RunContext` and read what they need from it; nothing below the pipeline sees it, so each stage package
can be used and tested on its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sera_ops.errors import PermanentError
from sera_ops.records import InstanceError, NotStarted
from sera_ops.redaction import redact
from sera_ops.rollouts.episode import Confinement, EpisodeTeacher
from sera_ops.rollouts.spend import Budget, SpendLedger, spend_ledger
from sera_ops.rollouts.teacher import TeacherClient
from sera_ops.settings import ModelServer, PlatformConfig, RepoSpec, SecretLookup, SecretRef, resolve_secret
from sera_ops.sources import repos
from sera_ops.store.io import StorePath
from sera_ops.store.layout import RepoStore, RunStore

log = logging.getLogger(__name__)


class BatchFailed(RuntimeError):
    """Too few instances of a batch got through a stage; Airflow retries the task, which redoes only the failures."""


class RunFailed(PermanentError, RuntimeError):
    """The run has nothing to go on (no usable commit, no instance got through); the message says why."""


class InvalidParam(PermanentError, ValueError):
    """A run parameter names something that is not configured."""


class SourceUnreachable(repos.SourceError):
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
    """One run of one repository: its settings, parameters, store and secrets. The pipeline's steps take it and hand
    each stage only the pieces that stage needs."""

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
        return replace(self, batch_server=batch_plan(self).get(batch_id, {}).get("server"))

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

    def confinement(self) -> Confinement:
        """How this run's episodes are confined: the repository's limits, the run label (to reap orphans), and the
        platform's policy for local episodes without bubblewrap."""
        return Confinement(limits=self.spec.sandbox, run_id=self.store.run_id,
                           allow_unconfined_local=self.platform.images.allow_unconfined_local)

    def agent_teacher(self, budget: Budget | None = None) -> EpisodeTeacher:
        """The agent's teacher for one instance's episode: the batch's server, charged to the instance's budget."""
        return EpisodeTeacher(self.server, self.api_key(), name=self.server_name, budget=budget)

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


def repo_path(ctx: RunContext) -> Path:
    """The source's git directory. A local path that is not a repository is a permanent error; a clone or fetch of a
    remote source may fail for the network's sake, so it is marked for retrying."""
    try:
        return repos.materialize(ctx.spec.source, ctx.store.repo_store.sources_dir)
    except repos.SourceError as exc:
        if ctx.spec.source.startswith("bundled:") or Path(ctx.spec.source).is_absolute():
            raise
        raise SourceUnreachable(str(exc)) from exc


def failure_record(stage: str, exc: Exception, secrets: list[str]) -> InstanceError:
    """Why `stage` failed (redacted), for whoever reads the run later."""
    return InstanceError(stage=stage, error=redact(f"{type(exc).__name__}: {exc}", secrets), time=time.time())


def batch_plan(ctx: RunContext) -> dict[str, dict]:
    """The run's batch plan: batch id → {"server", "instances"}."""
    return ctx.store.read_json(ctx.store.batches, {})
