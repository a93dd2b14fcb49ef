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
    """Export options (docs/sera-behaviour.md#export-options); `reformat` applies to the hermes format only."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    format: Literal["hermes", "xml", "raw"] = "hermes"
    """How tool calls and observations appear in the SFT records (SERA's `tool_call_format`): `hermes`, a
    `<tool_call>` JSON block per command and observations in `<tool_response>`; `xml`, a `<function=bash>` block per
    command and plain observations (both with SERA's matching system prompt); `raw`, the agent's messages as they
    are (`add_think` ignored)."""
    add_think: bool = False
    """Wrap each assistant text in a think block, for teachers without reasoning (so Qwen3 students see think
    blocks). With it, or with `reformat`, a teacher's reasoning content becomes the turn's think block."""
    add_train_key: bool = True
    """Give every message `train`: true for assistant turns, false otherwise, which training uses to put the loss on
    assistant turns only (axolotl's `message_field_training`)."""
    include_tool_json: bool = True
    """Attach the OpenAI tool schema as `tool_json` to each record: the `bash` tool only, where SERA's SWE-agent
    records listed bash, str_replace_editor and submit."""
    reformat: Literal["keep_only_think", "keep_only_non_think"] | None = "keep_only_think"
    """SERA's `reformat_assistant_message` (hermes only; null disables): every assistant turn becomes one think
    block plus its tool calls, the think block kept (`keep_only_think`) or rebuilt from the commentary
    (`keep_only_non_think`). A sample with an assistant turn that has no tool call is dropped."""
    enforce_submit: bool = True
    """Keep only trajectories whose exit status is exactly `submitted`."""

    @property
    def reformats(self) -> bool:
        """Whether assistant turns become think block + tool calls: SERA reformats the hermes format only."""
        return self.format == "hermes" and self.reformat is not None


class RolloutSettings(StrictModel):
    """One agent episode (both rollouts). Defaults are SERA's: 115 model calls, temperature 0.6, 3 tries of rollout
    one."""

    step_limit: int = Field(115, ge=1)
    """Model calls per episode before it is stopped (SERA's `per_instance_call_limit`: 115)."""
    temperature: float = Field(0.6, ge=0, le=2)
    """Sampling temperature of the agent's calls (SERA: 0.6, overriding its agent config's 0.0)."""
    max_tokens: int | None = Field(None, ge=1)
    """Completion tokens per agent call; None sends no limit (the server's own applies)."""
    max_attempts: int = Field(3, ge=1, le=10)
    """Rollout-one tries per instance, each with another rollout-one prompt template, until the judge calls the patch
    good (SERA: 3). Rollout two runs once."""
    time_limit_s: float = Field(1800.0, gt=0)
    """Wall-clock seconds per episode: no command runs past it, and the episode then ends (not a SERA setting)."""
    command_timeout_s: float = Field(60.0, gt=0)
    """Seconds one command may run before it is killed (SERA's mini-swe-agent config: 60; its SWE-agent config:
    300)."""


class CostLimits(StrictModel):
    """Spending caps on hosted teachers (priced by `price_per_mtok_in`/`_out`), in USD; None: no cap. An instance's
    spend counts every call made for it (agent, judge, writer, every attempt and retry)."""

    per_instance_usd: float | None = Field(None, gt=0)
    """An instance that reaches it gets no further calls: its episode ends as `cost_limited` (the call that crosses
    it completes). At most `per_run_usd`. SERA's `per_instance_cost_limit` was 0 (none) by default."""
    per_run_usd: float | None = Field(None, gt=0)
    """Once the run's spend reaches it, no further instance is started (those in flight finish; those left out
    count as `not_started`). SERA's `total_cost_limit` was 0 (none) by default."""

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
    """The repository as owner/name, e.g. psf/requests (required)."""
    api_url: HttpUrl | None = None
    """The GitHub API to read from. Default: the platform's `github.api_url`, else https://api.github.com."""
    token: SecretRef | None = None
    """Default: the platform's `github.token` when `api_url` is the platform's; without a token, anonymous (public
    repositories, low rate limit). SERA's scraper required `GITHUB_TOKEN` or `GH_TOKEN`."""
    state: Literal["closed", "open", "all"] = "closed"
    """Which issues to take, by state (SERA's scraper took all)."""
    labels: list[str] = []
    """Only issues carrying all of these labels (e.g. [bug])."""
    max_issues: int = Field(500, ge=1, le=5000)
    """Issues to keep, newest first (SERA's scraper: `-c`, 100 by default); listing stops after ten times as many
    have been looked at."""
    min_chars: int = Field(100, ge=0)
    """Shortest cleaned body kept (HTML comments and empty issue-form sections removed): stubs teach no style."""
    max_chars: int = Field(10000, ge=1)
    """Bounds on the cleaned body: stubs teach no style, and very long issues crowd the writer's context."""
    refresh_days: float = Field(7.0, gt=0)
    """Days the cached issues (`<storage_root>/<repo>/cache/demo_issues.json`) are used before they are fetched
    again; an outdated cache is still used while GitHub cannot be reached."""
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
    """Sampling temperature of the judge's and the writer's calls (SERA: 0.6, fixed)."""
    max_tokens: int = Field(4096, ge=1)
    """Completion tokens per judge or writer call (SERA: 4096, fixed)."""
    judge_retries: int = Field(3, ge=1, le=10)
    """Judge calls per rollout-one patch while the answer has no `<output>` tag; each try drops another quarter of
    the oldest agent steps (SERA: 3)."""
    writer_retries: int = Field(3, ge=1, le=10)
    """Writer calls per instance while the reply has no `<output>` tag (SERA: up to 10, also on rate-limit errors;
    here the client's `max_retries` handle those)."""
    demo_issues: Path | None = None
    """A JSON list of issue texts the writer imitates, one picked per instance (relative to the repository file);
    None: the packaged pool of 112 invented issues. SERA's default was all 500 SWE-bench Verified issues, or a
    scraped file given as `pipeline_repo`."""
    observation_chars: int = Field(2000, ge=100)
    """Characters of each command's output the judge and the writer see (longer outputs keep their head and tail
    halves); SERA sent the steps unclipped."""
    reveal_location: bool = False
    """Ask the writer to name the function and file (an experiment; SERA's PRs leave the agent to find the code)."""
    model_server: str | None = None
    """The judge's and writer's teacher when it is not the agent's (e.g. a stronger model judging a cheaper agent);
    one of the platform's `model_servers`. None: the agent's, as SERA always did."""
    demo_issues_from: GitHubDemoIssues | None = None
    """Demonstrations scraped from a GitHub repository instead of the packaged pool or a `demo_issues` file (not
    both); None: off."""

    @model_validator(mode="after")
    def _one_demo_source(self) -> SynthSettings:
        if self.demo_issues is not None and self.demo_issues_from is not None:
            raise FieldProblem("synth.demo_issues_from", "give either demo_issues (a JSON file) or demo_issues_from "
                                                          "(a GitHub repository), not both")
        return self


class VerifySettings(StrictModel):
    """Soft verification: how much of rollout one's patch rollout two must reproduce."""

    threshold: float = Field(1.0, ge=0, le=1)
    """Least recall of rollout one's changed lines in rollout two's patch for a t2 record: 1 hard (every changed
    line), 0 < t < 1 soft, 0 none. SERA's `eval.compare_patch_threshold` (1; its example configs use 0.5). The DAG's
    `threshold` param overrides it per run."""


EVAL_MODELS = ("base", "base+guide", "student", "teacher")
"""What `sera_eval__<name>` can compare: the trained model's base, the base with the repository guide (AGENTS.md)
in its task, the trained student, and the repository's teacher."""


class EvalSettings(StrictModel):
    """Held-out evaluation tasks, chosen before any data is made, and how `sera_eval__<name>` scores models on them.
    Not a SERA setting (SERA evaluated its students by hand on SWE-bench)."""

    fraction: float = Field(0.0, ge=0, lt=1)
    """Share of start functions held out, chosen by a hash of the seed, file and function name, so every run and
    commit holds out the same ones. 0 (with no `count` and no `commits`): nothing is held out."""
    count: int | None = Field(None, ge=1)
    """Start functions held out instead of a `fraction`: the first run chooses them (by the same hash) and records
    them in the repository's store, and every later run keeps them out of training."""
    seed: int = 0
    """Seed of the held-out choice (not the sampling `seed`, so that changing one never moves the other)."""
    commits: list[str] = []
    """Whole commits held out (hashes, at least 7 characters): every instance sampled from them is an evaluation
    task."""
    tasks_per_run: int | None = Field(None, ge=1)
    """Evaluation instances each run samples from the held-out functions; None: the run's function limit times
    `fraction` (rounded up), `count`, or the function limit for held-out commits."""
    test_cmd: str | None = None
    """The repository's test command, run in the task's container after each evaluation episode (exit 0: tests
    pass); None: no tests-pass column."""
    seeds: int = Field(3, ge=1, le=20)
    """Episodes per model and task, each with its own sampling seed; the report gives the mean ± std over them."""
    student_server: str | None = None
    """The model server that serves the latest trained model, where the platform does not serve it itself (the
    `local` training backend; `kubernetes` serves it with vLLM for the evaluation). The DAG's param overrides it."""
    base_server: str | None = None
    """The model server that serves the trained model's base (for `base` and `base+guide`)."""
    models: Annotated[list[Literal["base", "base+guide", "student", "teacher"]], AfterValidator(no_duplicates)] = \
        list(EVAL_MODELS)
    """What the evaluation DAG compares when it is not given model servers: see `EVAL_MODELS`. `base`,
    `base+guide` and `student` need a trained model."""

    @model_validator(mode="after")
    def _one_way_to_hold_out(self) -> EvalSettings:
        if self.fraction and self.count:
            raise FieldProblem("eval.count", "give either fraction or count of held-out start functions, not both")
        for index, commit in enumerate(self.commits):
            if not re.fullmatch(r"[0-9a-f]{7,40}", commit):
                raise FieldProblem(f"eval.commits.{index}", f"'{commit}' is not a commit hash (7 to 40 hex digits)")
        return self

    @property
    def holds_out(self) -> bool:
        return bool(self.fraction or self.count or self.commits)


class SandboxLimits(StrictModel):
    """What one agent episode may use: a teacher's commands are untrusted code running on the platform's machines.

    Containers get the cpus, memory (RAM + swap + /tmp), pids and network; local episodes get the same numbers as
    per-process rlimits (address space, processes of the episode, file size) inside bubblewrap.
    """

    cpus: float = Field(2.0, gt=0)
    """CPUs of an episode container (`docker run --cpus`); local episodes get a CPU-time rlimit from
    `rollout.time_limit_s` instead. Not a SERA setting, like the rest of this section."""
    memory_mb: int = Field(4096, ge=64)
    """Memory of an episode in MiB: a container's RAM + swap (its /tmp counts too), a local episode's address space
    per process."""
    pids: int = Field(512, ge=16)
    """Processes an episode may have at once (a container's pids limit; locally an rlimit), against fork bombs."""
    tmp_mb: int = Field(512, ge=1)
    """Size in MiB of the episode's /tmp, a tmpfs (the root file system is read-only)."""
    file_size_mb: int = Field(1024, ge=1)
    """Largest file in MiB a local episode's process may write (an rlimit); containers get no such limit."""
    network: str = "none"
    """`none`, or a Docker network to opt in to (a local episode then shares the worker's network)."""


class BatchSettings(StrictModel):
    """Instances are mapped in batches, not one by one, to stay far below Airflow's max_map_length."""

    batch_size: int = Field(8, ge=1, le=1000)
    """Least instances per mapped batch task, rounded up to whole rounds of the server's `concurrency` ×
    `episodes_per_slot` episodes. Not a SERA setting (SERA sharded by hand over replicas)."""
    max_batches: int = Field(256, ge=1, le=1000)
    """Batches grow beyond batch_size when a run has more instances than batch_size × max_batches."""
    min_success_fraction: float = Field(0.5, ge=0, le=1)
    """A batch task fails, and Airflow retries it, when fewer than this fraction of its instances got through."""


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
    """The SWE-bench instances whose images to use, e.g. django__django-11099 (at least one); each is one "commit"
    of the run, picked by the `commits` setting and DAG param by this id."""
    namespace: RegistryNamespace = "swebench"
    """Where the images are pulled from: Docker Hub's `swebench` (SERA's), or e.g. `127.0.0.1:5000/swebench` for a
    private copy. The image is `<namespace>/sweb.eval.<arch>.<id lower-cased>:<tag>` with every `__` → `_1776_`."""
    arch: Literal["x86_64", "arm64"] = "x86_64"
    """The images' architecture in their names (SERA: `x86_64`)."""
    tag: str = Field("latest", pattern=r"^[\w][\w.-]{0,127}$")
    """The images' tag; the digest actually pulled is recorded with the run."""


class SweSmithImages(StrictModel):
    """SWE-smith environment images, one per repository snapshot; the repository sits in /testbed."""

    repos: Annotated[list[str], AfterValidator(no_duplicates), all_match(
        SWESMITH_REPO_NAME, "a SWE-smith repository name (<owner>__<repo>.<commit8>, e.g. getmoto__moto.694ce1f4)")] \
        = Field(min_length=1)
    """SWE-smith repository names `<owner>__<repo>.<commit8>`, e.g. getmoto__moto.694ce1f4 (at least one); each is one
    "commit" of the run."""
    namespace: RegistryNamespace = "jyangballin"
    """Where the images are pulled from (SWE-smith's and SERA's default namespace). The image is
    `<namespace>/swesmith.<arch>.<owner>_1776_<repo>.<commit8>`, lower-cased."""
    arch: Literal["x86_64", "arm64"] = "x86_64"
    """The images' architecture in their names (SERA: `x86_64` unless the host is arm64)."""


class CustomImage(StrictModel):
    """Any image holding a git checkout of the repository at `workdir`; `commit`, when given, is checked."""

    image: str = Field(pattern=r"^[A-Za-z0-9][\w./:@-]*$")
    """The image reference (pulled when the engine lacks it); required."""
    workdir: str = Field(pattern=r"^(/[^/\s]+)+$")
    """Absolute path of the git checkout inside the image, where episodes run (required)."""
    commit: str | None = Field(None, pattern=r"^[0-9a-f]{7,40}$")
    """A commit hash (7 to 40 hex digits) the checkout's HEAD must start with; None: not checked."""


class RepoSpec(StrictModel):
    """One repository: where it comes from, which commits, how to install it, and per-stage settings."""

    name: str
    """The repository's name, which gives the DAG id `sera__<name>`: the file's name (`<name>.yaml`), which it must
    match when given; lower-case letters, digits, `-` and `_`."""
    source: str
    """Where the code comes from (required): a local git checkout (read only, committed history only; absolute or
    relative to this file), a git URL (cloned bare, fetched on reuse) or `bundled:<sample>`; or `swebench`,
    `swesmith` or `images`: existing images, listed in the section of that name. SERA cloned
    `github.com/<org_name>/<last_name>`."""
    swebench: SweBenchImages | None = None
    """The SWE-bench images of `source: swebench` (required then, an error otherwise)."""
    swesmith: SweSmithImages | None = None
    """The SWE-smith images of `source: swesmith` (required then, an error otherwise)."""
    images: list[CustomImage] = []
    """The images of `source: images` (required then, an error otherwise), each one "commit" of the run."""
    description: str = ""
    """The DAG's description in the Airflow UI (empty: `SERA data generation for <source>`)."""
    owner: str | None = None
    """The Airflow owner of this repository's DAGs (default: the platform's `defaults.owner`)."""
    tags: list[str] = []
    """Airflow tags of this repository's DAGs, next to the platform's `defaults.tags`."""
    schedule: str | None = None
    """The DAG's Airflow schedule, e.g. "@daily" for a personal repository; None: runs are triggered by hand."""
    incremental: bool | None = None
    """Skip commits an earlier run assembled and start functions (file, name, source hash) an earlier run rolled
    out; None: on when `schedule` is set. The DAG's `incremental` param overrides it per run."""
    commits: list[str] = []
    """Commits (hashes, tags or branches) to use as given; empty: `n_commits` evenly spaced over the last
    `lookback_days`, as SERA did. With an image source it picks images by label or key. The DAG's `commits` param
    overrides it per run."""
    n_commits: int = Field(5, ge=1)
    """Commits to pick from the lookback window when `commits` is empty, evenly spaced with both ends included
    (SERA: 5)."""
    lookback_days: int = Field(365, ge=1)
    """Days back from now whose commits on HEAD are picked from (SERA's `lookback`: 365)."""
    language: Literal["python"] = "python"
    """The project's language: only Python is supported (as in SERA end to end)."""
    install_cmds: list[str] = ["pip install -e ."]
    """Commands that install the project and its dependencies in its image (with build isolation, from the index
    `build_env` names), run in the shared dependency layer, or for every commit without `dependency_layer`. Never
    run in the local sandbox. SERA's default too, though SERA's conda environment export ignored them."""
    install_env: BuildEnv = {}
    """Per-repository `images.build_env` entries (plain values or secret references), overriding the platform's."""
    dependency_layer: bool = True
    """Share one dependency layer between commits whose dependency inputs match (base image, install commands and
    environment, dependency files), so only the commit's own source is installed per commit; false runs
    `install_cmds` for every commit. Not a SERA setting."""
    source_install_cmds: list[str] | None = None
    """Commands that install a commit's own source on the dependency layer, without network; None:
    `pip install --no-deps --no-build-isolation --no-cache-dir -e .` when there is a pyproject.toml or setup.py."""
    smoke_cmd: str | None = None
    """Run in each new image without network; a failure fails that commit, naming the module, and the image is
    never used. None: import every package of the code folders. (SERA stored a `test_cmd` but never ran it.)"""
    python_version: str | None = None
    """Picks the base image from `images.base_images` (e.g. "3.12"); the built image's Python must match. None:
    `images.base_image`. SERA's default was 3.10."""
    top_level_folder: list[str] = []
    """Code folders to take start functions from, relative to the repository root (a union; SERA used only the last
    one that exists). Empty: auto-detected (`<name>`, `src/<name>`, top-level packages other than tests and docs)."""
    max_folder_depth: int | None = Field(3, ge=0)
    """Files more than this many levels below a code folder are left out (SERA: 3); None or 0 keeps all."""
    fns_per_repo: int = Field(5000, ge=1)
    """Start functions sampled for the whole repository, across its commits (SERA: 5000 per commit or image). The
    DAG's `max_functions` param overrides it per run."""
    insts_per_fn: int = Field(1, ge=1)
    """Instances made of each start function, each rolled out on its own (SERA: 1)."""
    seed: int = 0
    """Seed of the start-function sample and of each instance's rollout-one template and demonstration issue, so a
    run is reproducible (SERA seeded none of them)."""
    model_server: str | None = None
    """This repository's teacher: one of the platform's `model_servers` (default: the first of `model_servers`,
    else the platform's `defaults.model_server`); with `model_servers` it may only repeat the first. The DAG's
    `model_server` param overrides it per run."""
    model_servers: Annotated[list[str], AfterValidator(no_duplicates), all_match(
        SERVER_NAME, "a model server name usable in a task group id (letters, digits, '_', '.', '-')")] = []
    """Teachers this repository's batches are spread over (default: [model_server]; the first is its main one); one
    batch group each in the DAG. Instances are shared by server capacity, a commit's instances kept on one server,
    and a dead server's batches move to the others (SERA sharded by hand, one replica per server)."""
    rollout: RolloutSettings = RolloutSettings()
    """Both rollouts' agent episodes: call and time limits, temperature, rollout-one tries."""
    cost_limits: CostLimits = CostLimits()
    """Spending caps on priced teachers, per instance and per run (none by default)."""
    sandbox: SandboxLimits = SandboxLimits()
    """What each agent episode may use: CPUs, memory, processes, /tmp, file size, network."""
    synth: SynthSettings = SynthSettings()
    """The judge and the synthetic-PR writer: sampling, retries, demonstrations, their teacher."""
    verify: VerifySettings = VerifySettings()
    """Soft verification of rollout two against rollout one."""
    postprocess: PostprocessOptions = PostprocessOptions()
    """How trajectories become SFT records (t1.jsonl, t2.jsonl)."""
    batching: BatchSettings = BatchSettings()
    """How instances are cut into mapped batch tasks."""
    eval: EvalSettings = EvalSettings()
    """The held-out evaluation split (decided before generation) and the evaluation DAG `sera_eval__<name>`."""
    training: TrainSettings | None = None
    """Fine-tuning on this repository's datasets: given, it adds the training DAG `sera_train__<name>`, run after
    every published dataset. None (the default): no training DAG."""
    source_file: Path | None = Field(None, exclude=True)
    """The file these settings were read from, filled in by the loader; not a setting."""

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
