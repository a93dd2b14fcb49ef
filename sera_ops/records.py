"""The typed records the stages write and read: instances, rollouts, judgements, synthetic PRs, verdicts and
the run store's bookkeeping records. A leaf: it imports no other module of the project, so every stage and the store
can share these types without importing each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar


@dataclass(frozen=True)
class StartFunction:
    """A function a rollout can start from; `name` is dotted through enclosing classes and functions."""

    name: str
    file: str
    line: int
    end_line: int

    @property
    def key(self) -> str:
        """Unique within a snapshot, and the form SERA's graph used: `path/to/file.py::Class.method`."""
        return f"{self.file}::{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StartFunction:
        return cls(name=str(data["name"]), file=str(data["file"]), line=int(data["line"]),
                   end_line=int(data["end_line"]))


EVAL_SPLIT = "eval"
"""The split of held-out instances."""


@dataclass(frozen=True)
class Instance:
    """One rollout-one starting point: an unmodified repository at `commit`, pointed at one start function."""

    instance_id: str
    repo: str
    commit: str
    start_fn: str
    start_fn_file: str
    copy_index: int
    split: str = "train"
    """`train`, or `eval` for a held-out instance: it goes through rollout one, the judge and the synthetic PR and
    becomes an evaluation task (`EvalTask`), never a training record."""

    @property
    def held_out(self) -> bool:
        return self.split == EVAL_SPLIT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Instance:
        return from_stored(cls, data)


COST_LIMITED = "cost_limited"
"""The exit status of an episode stopped by its instance's cost limit."""


@dataclass(frozen=True)
class Rollout:
    instance_id: str
    stage: int
    attempt: int
    task: str
    exit_status: str
    patch: str
    model_calls: int
    prompt_tokens: int
    completion_tokens: int
    duration_s: float
    trajectory_file: str
    template_index: int | None = None
    limits_hit: list[str] = field(default_factory=list)
    server: str = ""
    """The agent's model server (its name in platform.yaml)."""
    cost_usd: float = 0.0

    @property
    def submitted(self) -> bool:
        return self.exit_status.lower() == "submitted"

    @property
    def cost_limited(self) -> bool:
        return self.exit_status == COST_LIMITED

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Rollout:
        return cls(**data)


@dataclass(frozen=True)
class Judgement:
    is_good_patch: bool
    answer: str | None
    calls: int
    cost_limited: bool = False
    """The instance's cost limit stopped the judge before it answered (the patch then counts as not good)."""


@dataclass(frozen=True)
class Synthesis:
    """The synthetic PR for one instance (what rollout two is asked to solve)."""

    instance_id: str
    synth_pr: str | None
    demo_index: int
    demo_id: str
    """Which demonstration was imitated, e.g. `packaged[3]` or `owner/name#123`: stable when a pool is refreshed."""
    calls: int
    cost_limited: bool = False
    """The instance's cost limit stopped the writer before it wrote a PR."""
    writer_usage: dict | None = None
    """What writing it took (calls, tokens, cost); None in records from before writer usage was kept."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Synthesis:
        return cls(**{key: value for key, value in data.items() if key in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Verdict:
    """The soft-verification outcome of one instance, as stored next to its rollouts."""

    instance_id: str
    recall: float | None
    threshold: float
    resolved: bool
    target_lines: int
    produced_lines: int

    def to_dict(self) -> dict:
        return asdict(self)


R = TypeVar("R")


def from_stored(cls: type[R], data: dict) -> R:
    """A record from its stored form; keys an older or newer version wrote that this one lacks are ignored."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{key: value for key, value in data.items() if key in names})


@dataclass(frozen=True)
class RolloutOne:
    """rollout1.json: the final attempt, whether the judge called its patch good, and every attempt."""

    final: Rollout
    is_good_patch: bool
    attempts: list[dict]
    """{"rollout": Rollout as dict, "judgement": synth.Judgement as dict} per attempt, in order."""
    judge_usage: dict = field(default_factory=dict)
    cost_limited: bool = False

    def to_dict(self) -> dict:
        return {**asdict(self), "final": self.final.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> RolloutOne:
        return from_stored(cls, {**data, "final": Rollout.from_dict(data["final"])})


@dataclass(frozen=True)
class InstanceError:
    """<stage>.error.json: why an instance's stage failed (redacted), for whoever reads the run later."""

    stage: str
    error: str
    time: float

    @property
    def first_line(self) -> str:
        return self.error.splitlines()[0][:300] if self.error else ""


@dataclass(frozen=True)
class NotStarted:
    """not_started.json: the run's cost limit kept the instance from starting."""

    reason: str
    spent_usd: float


@dataclass(frozen=True)
class Duplicate:
    """duplicate.json: another instance of the run owns the same rollout-one patch."""

    duplicate_of: str
    patch: str


@dataclass(frozen=True)
class EvalTask:
    """A held-out instance as an evaluation task: the synthetic PR is the problem statement, the commit image the
    environment, rollout one's patch the reference. Never a training record (see `settings.EvalSettings`)."""

    task_id: str
    """The held-out instance's id."""
    repo: str
    commit: str
    image: dict
    """The commit's image record (`build.images.ImageRef` as a dict): where the task's episodes run."""
    problem_statement: str
    reference_patch: str
    start_fn: str
    start_fn_file: str
    run_id: str
    """The generation run that made the task."""
    test_cmd: str | None = None
    """The repository's test command (`eval.test_cmd`), run after an episode; None: no tests-pass check."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EvalTask:
        return from_stored(cls, data)


@dataclass(frozen=True)
class EvalResult:
    """One model's episode on one evaluation task with one seed, scored by soft verification."""

    model: str
    """The label of the evaluated model in the report (e.g. `student`, `base`, `base+guide`, a model server)."""
    task_id: str
    seed: int
    resolved: bool
    """Changed-line recall against the reference reached the threshold."""
    recall: float | None
    threshold: float
    tests_passed: bool | None
    """Whether the repository's test command passed after the patch; None: no test command."""
    exit_status: str
    patch: str
    model_calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    duration_s: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EvalResult:
        return from_stored(cls, data)
