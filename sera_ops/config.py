"""Platform and repository configuration: YAML files validated by pydantic, errors that name the file and the field.

`config/platform.yaml` holds what is shared (storage, registry, model servers, defaults); `config/repos/<name>.yaml`
holds one repository, and each such file becomes one DAG. Relative paths are resolved against the file that contains
them, never against the working directory (SERA's paths broke whenever it was started from elsewhere).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sera_ops.train_settings import TrainingPlatformSettings, TrainSettings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PLATFORM_CONFIG_ENV = "SERA_PLATFORM_CONFIG"
REPO_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class ConfigError(ValueError):
    """A configuration file is unusable; the message names the file, the field and what is expected."""

    def __init__(self, file: Path | str, field: str, problem: str):
        self.file, self.field, self.problem = str(file), field, problem
        super().__init__(f"{file}: field '{field}': {problem}" if field else f"{file}: {problem}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SecretRef(_Strict):
    """Where a secret lives: an Airflow connection (its password) and/or an environment variable. Never the value."""

    connection: str | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if not self.connection and not self.env:
            raise ValueError("give 'connection' (an Airflow connection id) and/or 'env' (an environment variable)")
        return self


SecretLookup = Callable[[str], "str | None"]


def pool_name(server: str) -> str:
    """The Airflow pool that throttles batch tasks of one model server."""
    return f"sera_model_{server}"


def resolve_secret(ref: SecretRef | None, connection_lookup: SecretLookup | None = None) -> str | None:
    """The secret's value: the connection first (when running under Airflow), then the environment variable."""
    if ref is None:
        return None
    if ref.connection and connection_lookup is not None:
        value = connection_lookup(ref.connection)
        if value:
            return value
    if ref.env:
        return os.environ.get(ref.env) or None
    return None


def _http_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("expected an http(s) URL such as http://127.0.0.1:8000/v1 or https://api.github.com")
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_http_url)]


class ModelServer(_Strict):
    """An OpenAI-compatible endpoint serving a teacher model (vLLM, SGLang, a hosted API, or the scripted teacher).

    At most `parallel_batches` batch tasks use it at once (its Airflow pool), each running `concurrency` episodes.
    """

    base_url: HttpUrl
    model: str
    concurrency: int = Field(4, ge=1, le=256)
    episodes_per_slot: int = Field(2, ge=1, le=16)
    """Agent episodes per request slot: an episode spends part of its time running commands in its sandbox, so a
    batch task runs `concurrency` × this many episodes to keep all `concurrency` request slots busy."""
    parallel_batches: int = Field(2, ge=1, le=256)
    api_key: SecretRef | None = None
    timeout_s: float = Field(300.0, gt=0)
    max_retries: int = Field(3, ge=0, le=20)
    tool_calls: bool = True
    price_per_mtok_in: float = Field(0.0, ge=0)
    price_per_mtok_out: float = Field(0.0, ge=0)
    """USD per million prompt / completion tokens, for a hosted teacher's cost and `cost_limits` (0: free, e.g.
    self-hosted). Cached-prompt discounts are not modelled, so a cost is an upper bound."""

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price_per_mtok_in + completion_tokens * self.price_per_mtok_out) / 1e6



class RegistrySettings(_Strict):
    url: str = "127.0.0.1:5000"
    namespace: str = "sera"
    push: bool = True
    credentials: SecretRef | None = None
    username: str | None = None
    insecure: bool = False
    """Speak plain HTTP to this registry (loopback registries always are)."""


BuildEnv = dict[str, str | SecretRef]
"""Environment for install steps: plain values, or secrets taken from a connection or env var at build time."""


class ImageSettings(_Strict):
    """How commit images are built. Install steps get `build_env` (never written into an image) and the engine's
    normal network by default: real projects resolve their dependencies from an index, a proxy or a wheelhouse."""

    base_image: str = "sera-base:bookworm"
    base_images: dict[str, str] | str = {"3.11": "sera-base:bookworm"}
    """Base per `python_version`: a mapping ("3.12": image) or a template such as "python:{version}-slim"."""
    build_network: str = "bridge"
    build_env: BuildEnv = {}
    build_timeout_s: float = Field(1800.0, gt=0)
    sandbox: Literal["auto", "docker", "local"] = "auto"
    allow_unconfined_local: bool = False
    """Let a real teacher drive local episodes without bubblewrap (its commands then run as the worker)."""

    @field_validator("base_images")
    @classmethod
    def _template_names_version(cls, value: dict[str, str] | str) -> dict[str, str] | str:
        if isinstance(value, str) and "{version}" not in value:
            raise ValueError("a base image template must contain '{version}', e.g. 'python:{version}-slim'; or give "
                             "a mapping such as {'3.11': 'sera-base:bookworm'}")
        return value

    def base_for(self, python_version: str | None) -> str | None:
        """The base image for a Python version (None: `base_image`); None when no base is configured for it."""
        if python_version is None:
            return self.base_image
        if isinstance(self.base_images, str):
            return self.base_images.format(version=python_version)
        return self.base_images.get(python_version)

    def describe_bases(self) -> str:
        if isinstance(self.base_images, str):
            return f"template {self.base_images!r}"
        return ", ".join(f"{version} -> {image}" for version, image in sorted(self.base_images.items())) or "none"


class MirrorSettings(_Strict):
    """Where repositories are mirrored (stage 1): a GitHub organisation, private by default."""

    api_url: HttpUrl = "https://api.github.com"
    organisation: str = Field(min_length=1)
    private: bool = True
    token: SecretRef | None = SecretRef(env="GITHUB_TOKEN")
    name_prefix: str = ""
    disable_actions: bool = True
    """Turn GitHub Actions off in newly created mirrors, so pushing history does not run the source's workflows."""

    @field_validator("organisation")
    @classmethod
    def _github_login(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$", value):
            raise ValueError("expected a GitHub organisation login: letters, digits and '-', at most 39 characters")
        return value

    @field_validator("name_prefix")
    @classmethod
    def _name_characters(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9._-]*$", value):
            raise ValueError("a repository name prefix may contain only letters, digits, '.', '-' and '_'")
        return value


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


class PlatformDefaults(_Strict):
    model_server: str
    owner: str = "sera"
    retries: int = Field(2, ge=0, le=20)
    retry_delay_s: float = Field(30.0, ge=0)
    tags: list[str] = ["sera"]


class PlatformConfig(_Strict):
    storage_root: Path | str
    """A local directory, or an object-storage URL (`s3://bucket/prefix`, `gs://bucket/prefix`)."""
    storage_conn_id: str | None = None
    """The Airflow connection with the object store's credentials (e.g. `aws_default`); outside Airflow, storage
    options come from $SERA_STORAGE_OPTIONS. Never put credentials in this file."""
    local_cache_dir: Path | None = None
    """Worker-local disk for git clones, snapshots and build locks when `storage_root` is remote (default
    ~/.cache/sera)."""
    repos_dir: Path = Path("repos")
    registry: RegistrySettings = RegistrySettings()
    images: ImageSettings = ImageSettings()
    model_servers: dict[str, ModelServer] = Field(min_length=1)
    defaults: PlatformDefaults
    training: TrainingPlatformSettings = TrainingPlatformSettings()
    github: MirrorSettings | None = None
    source_file: Path | None = Field(None, exclude=True)

    @field_validator("storage_root", mode="after")
    @classmethod
    def _local_root_is_a_path(cls, value: Path | str) -> Path | str:
        return value if is_storage_url(value) else Path(value)

    @model_validator(mode="after")
    def _pod_training_needs_a_mounted_store(self) -> PlatformConfig:
        """The training pod reads the dataset and writes the model through a mounted claim; on object storage the
        `local` backend stages them instead. A pod given URLs it cannot open would fail only after scheduling."""
        if self.training.backend == "kubernetes" and is_storage_url(self.storage_root):
            raise _FieldProblem("training.backend", f"the kubernetes training pod needs storage_root on a mounted "
                                f"volume (training.kubernetes.storage_claim), not {self.storage_root}; use a "
                                "ReadWriteMany claim for the store, or training.backend: local")
        return self

    @model_validator(mode="after")
    def _default_server_exists(self) -> PlatformConfig:
        if self.defaults.model_server not in self.model_servers:
            raise _FieldProblem("defaults.model_server",
                                f"'{self.defaults.model_server}' is not one of model_servers "
                                f"({', '.join(sorted(self.model_servers))})")
        return self

    def pools(self) -> dict[str, dict]:
        """One Airflow pool per model server, in the format of `airflow pools import`."""
        return {pool_name(name): {"slots": server.parallel_batches, "include_deferred": False,
                                  "description": f"SERA batch tasks talking to model server '{name}' ({server.model})"}
                for name, server in sorted(self.model_servers.items())}

    def server(self, name: str) -> ModelServer:
        try:
            return self.model_servers[name]
        except KeyError:
            raise ValueError(f"unknown model server '{name}'; configured: {', '.join(sorted(self.model_servers))}") \
                from None


class RolloutSettings(_Strict):
    """One agent episode (both rollouts). Defaults are SERA's: 115 model calls, temperature 0.6, 3 tries."""

    step_limit: int = Field(115, ge=1)
    temperature: float = Field(0.6, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    max_attempts: int = Field(3, ge=1, le=10)
    time_limit_s: float = Field(1800.0, gt=0)
    command_timeout_s: float = Field(60.0, gt=0)


class CostLimits(_Strict):
    """Spending caps on hosted teachers (priced by `price_per_mtok_in`/`_out`), in USD; None: no cap. An instance's
    spend counts every call made for it (agent, judge, writer, every attempt and retry)."""

    per_instance_usd: float | None = Field(None, gt=0)
    """An instance that reaches it gets no further calls: its episode ends as `cost_limited`."""
    per_run_usd: float | None = Field(None, gt=0)
    """Once the run's spend reaches it, no further instance is started (those in flight finish)."""

    @model_validator(mode="after")
    def _instance_within_run(self) -> CostLimits:
        if self.per_instance_usd and self.per_run_usd and self.per_instance_usd > self.per_run_usd:
            raise _FieldProblem("cost_limits.per_instance_usd",
                                f"{self.per_instance_usd:g} is more than per_run_usd ({self.per_run_usd:g})")
        return self


class GitHubDemoIssues(_Strict):
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
            raise _FieldProblem("synth.demo_issues_from.max_chars",
                                f"must be greater than min_chars ({self.max_chars} <= {self.min_chars})")
        return self


class SynthSettings(_Strict):
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
            raise _FieldProblem("synth.demo_issues_from", "give either demo_issues (a JSON file) or demo_issues_from "
                                                          "(a GitHub repository), not both")
        return self


class VerifySettings(_Strict):
    threshold: float = Field(1.0, ge=0, le=1)


class SandboxLimits(_Strict):
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


class BatchSettings(_Strict):
    """Instances are mapped in batches, not one by one, to stay far below Airflow's max_map_length."""

    batch_size: int = Field(8, ge=1, le=1000)
    max_batches: int = Field(256, ge=1, le=1000)
    """Batches grow beyond batch_size when a run has more instances than batch_size × max_batches."""
    min_success_fraction: float = Field(0.5, ge=0, le=1)


IMAGE_SOURCES = ("swebench", "swesmith", "images")
"""`source` values naming existing images instead of a git repository; each reads its own section of the file."""
SWEBENCH_INSTANCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*__[A-Za-z0-9_.-]+-[0-9]+$")
SERVER_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
STORAGE_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
SWESMITH_REPO_NAME = re.compile(r"^(?P<owner>[A-Za-z0-9][A-Za-z0-9-]*)__(?P<repo>[A-Za-z0-9_.-]+)\."
                                r"(?P<commit>[0-9a-f]{8})$")


def _registry_namespace(value: str) -> str:
    if not re.match(r"^[a-z0-9][a-z0-9.-]*(:[0-9]+)?(/[a-z0-9][a-z0-9._-]*)*$", value):
        raise ValueError("expected a registry namespace such as 'swebench' or '127.0.0.1:5000/swebench' (lower case, "
                         "no tag, no trailing '/')")
    return value


RegistryNamespace = Annotated[str, AfterValidator(_registry_namespace)]


def _all_match(pattern: re.Pattern[str], what: str) -> AfterValidator:
    """A list validator naming every entry that is not `what`."""

    def check(values: list[str]) -> list[str]:
        bad = [value for value in values if not pattern.match(value)]
        if bad:
            raise ValueError(f"not {what}: {', '.join(map(repr, bad))}")
        return values

    return AfterValidator(check)


def _no_duplicates(values: list[str]) -> list[str]:
    repeated = sorted({value for value in values if values.count(value) > 1})
    if repeated:
        raise ValueError(f"listed more than once: {', '.join(repeated)}")
    return values


class SweBenchImages(_Strict):
    """SWE-bench instance images, named by the harness's rule; the repository sits at its base commit in /testbed."""

    instance_ids: Annotated[list[str], AfterValidator(_no_duplicates), _all_match(
        SWEBENCH_INSTANCE_ID, "a SWE-bench instance id (<owner>__<repo>-<number>, e.g. django__django-11099)")] = \
        Field(min_length=1)
    namespace: RegistryNamespace = "swebench"
    arch: Literal["x86_64", "arm64"] = "x86_64"
    tag: str = Field("latest", pattern=r"^[\w][\w.-]{0,127}$")


class SweSmithImages(_Strict):
    """SWE-smith environment images, one per repository snapshot; the repository sits in /testbed."""

    repos: Annotated[list[str], AfterValidator(_no_duplicates), _all_match(
        SWESMITH_REPO_NAME, "a SWE-smith repository name (<owner>__<repo>.<commit8>, e.g. getmoto__moto.694ce1f4)")] \
        = Field(min_length=1)
    namespace: RegistryNamespace = "jyangballin"
    arch: Literal["x86_64", "arm64"] = "x86_64"


class CustomImage(_Strict):
    """Any image holding a git checkout of the repository at `workdir`; `commit`, when given, is checked."""

    image: str = Field(pattern=r"^[A-Za-z0-9][\w./:@-]*$")
    workdir: str = Field(pattern=r"^(/[^/\s]+)+$")
    commit: str | None = Field(None, pattern=r"^[0-9a-f]{7,40}$")


class RepoSpec(_Strict):
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
    model_servers: Annotated[list[str], AfterValidator(_no_duplicates), _all_match(
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
                raise _FieldProblem(section, f"required with 'source: {section}' (the images to use)")
            if given and self.source != section:
                raise _FieldProblem(section, f"only read with 'source: {section}' (source is '{self.source}')")
        places = [(image.image, image.workdir) for image in self.images]
        for index, place in enumerate(places):
            if place in places[:index]:
                raise _FieldProblem(f"images.{index}", f"{place[0]} at {place[1]} is listed twice")
        return self

    @model_validator(mode="after")
    def _primary_server_listed(self) -> RepoSpec:
        if self.model_server and self.model_servers and self.model_server != self.model_servers[0]:
            raise _FieldProblem("model_server", f"'{self.model_server}' is not the first of model_servers "
                                                f"({', '.join(self.model_servers)}); give only model_servers")
        return self

    @property
    def dag_id(self) -> str:
        return f"sera__{self.name}"


class _FieldProblem(ValueError):
    """Raised inside validators to point at a field other than the one being validated."""

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(problem)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(path, "", "file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(path, "", f"not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, "", f"expected a mapping of settings at the top level, got {type(data).__name__}")
    return data


def _as_config_error(path: Path, exc: ValidationError) -> ConfigError:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    ctx_error = (first.get("ctx") or {}).get("error")
    if isinstance(ctx_error, _FieldProblem):
        return ConfigError(path, ctx_error.field, ctx_error.problem)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown setting; check the spelling against the README's configuration reference"
    elif first["type"] == "missing":
        message = "required setting is missing"
    if "input" in first and first["type"] not in ("missing", "extra_forbidden"):
        message += f" (got {first['input']!r})"
    more = len(exc.errors()) - 1
    if more:
        message += f" [and {more} more problem{'s' if more > 1 else ''} in this file]"
    return ConfigError(path, field, message)


def _resolve(base: Path, value: Path | None) -> Path | None:
    if value is None:
        return None
    value = Path(os.path.expanduser(str(value)))
    return value if value.is_absolute() else (base / value).resolve()


def is_storage_url(root: Path | str) -> bool:
    """Whether a storage root names object storage (`s3://…`, `gs://…`) rather than a local directory."""
    return isinstance(root, str) and bool(STORAGE_URL.match(root)) and not root.startswith("file://")


def default_platform_path() -> Path:
    return Path(os.environ.get(PLATFORM_CONFIG_ENV) or PROJECT_ROOT / "config" / "platform.yaml")


def load_platform(path: Path | str | None = None) -> PlatformConfig:
    path = Path(path) if path else default_platform_path()
    data = _read_yaml(path)
    try:
        config = PlatformConfig.model_validate(data)
    except ValidationError as exc:
        raise _as_config_error(path, exc) from None
    base = path.resolve().parent
    return config.model_copy(update={
        "storage_root": (config.storage_root if is_storage_url(config.storage_root)
                         else _resolve(base, Path(config.storage_root))),
        "local_cache_dir": _resolve(base, config.local_cache_dir),
        "repos_dir": _resolve(base, config.repos_dir),
        "source_file": path.resolve(),
    })


def load_repo(path: Path | str, platform: PlatformConfig) -> RepoSpec:
    path = Path(path)
    data = _read_yaml(path)
    data.setdefault("name", path.stem)
    try:
        spec = RepoSpec.model_validate(data)
    except ValidationError as exc:
        raise _as_config_error(path, exc) from None
    if spec.name != path.stem:
        raise ConfigError(path, "name", f"must match the file name '{path.stem}' (one file = one repository = one DAG)")
    named = [("model_server", spec.model_server), ("synth.model_server", spec.synth.model_server),
             *((f"model_servers.{index}", server) for index, server in enumerate(spec.model_servers))]
    for field_name, server in named:
        if server is not None and server not in platform.model_servers:
            raise ConfigError(path, field_name, f"'{server}' is not defined in {platform.source_file} "
                              f"(model_servers: {', '.join(sorted(platform.model_servers))})")
    base = path.resolve().parent
    synth = spec.synth.model_copy(update={"demo_issues": _resolve(base, spec.synth.demo_issues)})
    return spec.model_copy(update={
        "source": resolve_source(spec.source, base),
        "synth": synth,
        "owner": spec.owner or platform.defaults.owner,
        "model_server": spec.model_server or (spec.model_servers or [platform.defaults.model_server])[0],
        "model_servers": spec.model_servers or [spec.model_server or platform.defaults.model_server],
        "source_file": path.resolve(),
    })


def resolve_source(source: str, base: Path) -> str:
    """Local paths become absolute; URLs, bundled:<name> and image sources stay as they are (a local directory
    named like an image source is written ./swebench)."""
    if (source in IMAGE_SOURCES or source.startswith("bundled:") or re.match(r"^[a-z+]+://", source)
            or re.match(r"^[\w.-]+@[\w.-]+:", source)):
        return source
    return str(_resolve(base, Path(source)))


def repo_files(platform: PlatformConfig) -> list[Path]:
    if not platform.repos_dir.is_dir():
        return []
    return sorted(p for p in platform.repos_dir.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def load_repos(platform: PlatformConfig) -> tuple[list[RepoSpec], list[ConfigError]]:
    """Every repository file; a bad file is reported on its own and never hides the good ones."""
    specs: list[RepoSpec] = []
    errors: list[ConfigError] = []
    for path in repo_files(platform):
        try:
            specs.append(load_repo(path, platform))
        except ConfigError as exc:
            errors.append(exc)
    return specs, errors
