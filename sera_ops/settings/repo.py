"""`config/repos/<name>.yaml`: one repository — its source, commits, install steps, and every stage's settings.

Each such file becomes one DAG. Defaults are SERA's unless a field's description says otherwise.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from sera_ops.settings.base import FieldProblem, HttpUrl, SecretRef, StrictModel, all_match, no_duplicates
from sera_ops.settings.platform import SERVER_NAME, BuildEnv
from sera_ops.settings.training import TrainSettings

REPO_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class PostprocessOptions(BaseModel):
    """Export options (sera.md §7.3); `reformat` applies to the hermes format only."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["hermes", "xml", "raw"] = "hermes"
    add_think: bool = False
    add_train_key: bool = True
    include_tool_json: bool = True
    reformat: Literal["keep_only_think", "keep_only_non_think"] | None = "keep_only_think"
    enforce_submit: bool = True

    @property
    def reformats(self) -> bool:
        """Whether assistant turns become think block + tool calls: SERA reformats the hermes format only."""
        return self.format == "hermes" and self.reformat is not None


class RolloutSettings(StrictModel):
    """One agent episode (both rollouts). Defaults are SERA's: 115 model calls, temperature 0.6, 3 tries."""

    step_limit: int = Field(115, ge=1)
    temperature: float = Field(0.6, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    max_attempts: int = Field(3, ge=1, le=10)
    time_limit_s: float = Field(1800.0, gt=0)
    command_timeout_s: float = Field(60.0, gt=0)


class CostLimits(StrictModel):
    """Spending caps on hosted teachers (priced by `price_per_mtok_in`/`_out`), in USD; None: no cap. An instance's
    spend counts every call made for it (agent, judge, writer, every attempt and retry)."""

    per_instance_usd: float | None = Field(None, gt=0)
    """An instance that reaches it gets no further calls: its episode ends as `cost_limited`."""
    per_run_usd: float | None = Field(None, gt=0)
    """Once the run's spend reaches it, no further instance is started (those in flight finish)."""

    @model_validator(mode="after")
    def _instance_within_run(self) -> CostLimits:
        if self.per_instance_usd and self.per_run_usd and self.per_instance_usd > self.per_run_usd:
            raise FieldProblem("cost_limits.per_instance_usd",
                                f"{self.per_instance_usd:g} is more than per_run_usd ({self.per_run_usd:g})")
        return self


class GitHubDemoIssues(StrictModel):
    """A GitHub repository whose own issues become the PR writer's demonstrations (SERA's scrape_github.py), so the
    synthetic PRs read like the issues its users actually file. Fetched once, then cached in the repository's store."""

    github: str
    """owner/name."""
    api_url: HttpUrl | None = None
    """Default: the platform's `github.api_url`, else https://api.github.com."""
    token: SecretRef | None = None
    """Default: the platform's `github.token`; without either, anonymous (public repositories, low rate limit)."""
    state: Literal["closed", "open", "all"] = "closed"
    labels: list[str] = []
    """Only issues carrying all of these labels (e.g. [bug])."""
    max_issues: int = Field(500, ge=1, le=5000)
    min_chars: int = Field(100, ge=0)
    max_chars: int = Field(10000, ge=1)
    """Bounds on the cleaned body: stubs teach no style, and very long issues crowd the writer's context."""
    refresh_days: float = Field(7.0, gt=0)
    fallback: Literal["none", "packaged"] = "none"
    """`packaged`: use the packaged pool when GitHub cannot be reached and nothing is cached (never for a wrong
    repository, token or filter, which stay errors)."""

    @field_validator("github")
    @classmethod
    def _full_name(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$", value):
            raise ValueError("expected a GitHub repository as owner/name, e.g. psf/requests")
        return value

    @model_validator(mode="after")
    def _bounds_in_order(self) -> GitHubDemoIssues:
        if self.min_chars >= self.max_chars:
            raise FieldProblem("synth.demo_issues_from.max_chars",
                                f"must be greater than min_chars ({self.max_chars} <= {self.min_chars})")
        return self


class SynthSettings(StrictModel):
    """Judge and synthetic-PR writer calls (SERA: temperature 0.6, 4096 tokens, judge retried 3 times)."""

    temperature: float = Field(0.6, ge=0, le=2)
    max_tokens: int = Field(4096, ge=1)
    judge_retries: int = Field(3, ge=1, le=10)
    writer_retries: int = Field(3, ge=1, le=10)
    demo_issues: Path | None = None
    observation_chars: int = Field(2000, ge=100)
    reveal_location: bool = False
    """Ask the writer to name the function and file (an experiment; SERA's PRs leave the agent to find the code)."""
    model_server: str | None = None
    """The judge's and writer's teacher when it is not the agent's (e.g. a stronger model judging a cheaper agent)."""
    demo_issues_from: GitHubDemoIssues | None = None
    """Demonstrations scraped from a GitHub repository instead of the packaged pool or a `demo_issues` file."""

    @model_validator(mode="after")
    def _one_demo_source(self) -> SynthSettings:
        if self.demo_issues is not None and self.demo_issues_from is not None:
            raise FieldProblem("synth.demo_issues_from", "give either demo_issues (a JSON file) or demo_issues_from "
                                                          "(a GitHub repository), not both")
        return self


class VerifySettings(StrictModel):
    threshold: float = Field(1.0, ge=0, le=1)


class SandboxLimits(StrictModel):
    """What one agent episode may use: a teacher's commands are untrusted code running on the platform's machines.

    Containers get the cpus, memory (RAM + swap + /tmp), pids and network; local episodes get the same numbers as
    per-process rlimits (address space, processes of the episode, file size) inside bubblewrap.
    """

    cpus: float = Field(2.0, gt=0)
    memory_mb: int = Field(4096, ge=64)
    pids: int = Field(512, ge=16)
    tmp_mb: int = Field(512, ge=1)
    file_size_mb: int = Field(1024, ge=1)
    network: str = "none"
    """`none`, or a Docker network to opt in to (a local episode then shares the worker's network)."""


class BatchSettings(StrictModel):
    """Instances are mapped in batches, not one by one, to stay far below Airflow's max_map_length."""

    batch_size: int = Field(8, ge=1, le=1000)
    max_batches: int = Field(256, ge=1, le=1000)
    """Batches grow beyond batch_size when a run has more instances than batch_size × max_batches."""
    min_success_fraction: float = Field(0.5, ge=0, le=1)


IMAGE_SOURCES = ("swebench", "swesmith", "images")
"""`source` values naming existing images instead of a git repository; each reads its own section of the file."""


SWEBENCH_INSTANCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*__[A-Za-z0-9_.-]+-[0-9]+$")


SWESMITH_REPO_NAME = re.compile(r"^(?P<owner>[A-Za-z0-9][A-Za-z0-9-]*)__(?P<repo>[A-Za-z0-9_.-]+)\."
                                r"(?P<commit>[0-9a-f]{8})$")


def _registry_namespace(value: str) -> str:
    if not re.match(r"^[a-z0-9][a-z0-9.-]*(:[0-9]+)?(/[a-z0-9][a-z0-9._-]*)*$", value):
        raise ValueError("expected a registry namespace such as 'swebench' or '127.0.0.1:5000/swebench' (lower case, "
                         "no tag, no trailing '/')")
    return value


RegistryNamespace = Annotated[str, AfterValidator(_registry_namespace)]


class SweBenchImages(StrictModel):
    """SWE-bench instance images, named by the harness's rule; the repository sits at its base commit in /testbed."""

    instance_ids: Annotated[list[str], AfterValidator(no_duplicates), all_match(
        SWEBENCH_INSTANCE_ID, "a SWE-bench instance id (<owner>__<repo>-<number>, e.g. django__django-11099)")] = \
        Field(min_length=1)
    namespace: RegistryNamespace = "swebench"
    arch: Literal["x86_64", "arm64"] = "x86_64"
    tag: str = Field("latest", pattern=r"^[\w][\w.-]{0,127}$")


class SweSmithImages(StrictModel):
    """SWE-smith environment images, one per repository snapshot; the repository sits in /testbed."""

    repos: Annotated[list[str], AfterValidator(no_duplicates), all_match(
        SWESMITH_REPO_NAME, "a SWE-smith repository name (<owner>__<repo>.<commit8>, e.g. getmoto__moto.694ce1f4)")] \
        = Field(min_length=1)
    namespace: RegistryNamespace = "jyangballin"
    arch: Literal["x86_64", "arm64"] = "x86_64"


class CustomImage(StrictModel):
    """Any image holding a git checkout of the repository at `workdir`; `commit`, when given, is checked."""

    image: str = Field(pattern=r"^[A-Za-z0-9][\w./:@-]*$")
    workdir: str = Field(pattern=r"^(/[^/\s]+)+$")
    commit: str | None = Field(None, pattern=r"^[0-9a-f]{7,40}$")


class RepoSpec(StrictModel):
    """One repository: where it comes from, which commits, how to install it, and per-stage settings."""

    name: str
    source: str
    swebench: SweBenchImages | None = None
    swesmith: SweSmithImages | None = None
    images: list[CustomImage] = []
    description: str = ""
    owner: str | None = None
    tags: list[str] = []
    schedule: str | None = None
    incremental: bool | None = None
    commits: list[str] = []
    n_commits: int = Field(5, ge=1)
    lookback_days: int = Field(365, ge=1)
    language: Literal["python"] = "python"
    install_cmds: list[str] = ["pip install -e ."]
    install_env: BuildEnv = {}
    dependency_layer: bool = True
    source_install_cmds: list[str] | None = None
    smoke_cmd: str | None = None
    python_version: str | None = None
    top_level_folder: list[str] = []
    max_folder_depth: int | None = Field(3, ge=0)
    fns_per_repo: int = Field(5000, ge=1)
    insts_per_fn: int = Field(1, ge=1)
    seed: int = 0
    model_server: str | None = None
    model_servers: Annotated[list[str], AfterValidator(no_duplicates), all_match(
        SERVER_NAME, "a model server name usable in a task group id (letters, digits, '_', '.', '-')")] = []
    """Teachers this repository's batches are spread over (default: [model_server]; the first is its main one); one
    batch group each in the DAG."""
    rollout: RolloutSettings = RolloutSettings()
    cost_limits: CostLimits = CostLimits()
    sandbox: SandboxLimits = SandboxLimits()
    synth: SynthSettings = SynthSettings()
    verify: VerifySettings = VerifySettings()
    postprocess: PostprocessOptions = PostprocessOptions()
    batching: BatchSettings = BatchSettings()
    training: TrainSettings | None = None
    source_file: Path | None = Field(None, exclude=True)

    @field_validator("name")
    @classmethod
    def _dag_safe_name(cls, value: str) -> str:
        if not re.match(REPO_NAME_PATTERN, value):
            raise ValueError("use lower-case letters, digits, '-' or '_' (it becomes the DAG id sera__<name>)")
        return value

    @field_validator("source")
    @classmethod
    def _source_form(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("give a local path, a git URL, bundled:<sample name>, or swebench, swesmith or images "
                             "(existing images, listed in the section of that name)")
        return value

    @model_validator(mode="after")
    def _image_sections(self) -> RepoSpec:
        """Each image source reads exactly its own section, so a section that would be ignored is an error."""
        for section in IMAGE_SOURCES:
            given = bool(getattr(self, section))
            if self.source == section and not given:
                raise FieldProblem(section, f"required with 'source: {section}' (the images to use)")
            if given and self.source != section:
                raise FieldProblem(section, f"only read with 'source: {section}' (source is '{self.source}')")
        places = [(image.image, image.workdir) for image in self.images]
        for index, place in enumerate(places):
            if place in places[:index]:
                raise FieldProblem(f"images.{index}", f"{place[0]} at {place[1]} is listed twice")
        return self

    @model_validator(mode="after")
    def _primary_server_listed(self) -> RepoSpec:
        if self.model_server and self.model_servers and self.model_server != self.model_servers[0]:
            raise FieldProblem("model_server", f"'{self.model_server}' is not the first of model_servers "
                                                f"({', '.join(self.model_servers)}); give only model_servers")
        return self

    @property
    def dag_id(self) -> str:
        return f"sera__{self.name}"
