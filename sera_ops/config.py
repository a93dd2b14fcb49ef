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

from sera_ops.postprocess import PostprocessOptions
from sera_ops.train import TrainSettings
from sera_ops.train_jobs import TrainingPlatformSettings

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
    parallel_batches: int = Field(2, ge=1, le=256)
    api_key: SecretRef | None = None
    timeout_s: float = Field(300.0, gt=0)
    max_retries: int = Field(3, ge=0, le=20)
    tool_calls: bool = True



class RegistrySettings(_Strict):
    url: str = "127.0.0.1:5000"
    namespace: str = "sera"
    push: bool = True
    credentials: SecretRef | None = None
    username: str | None = None


class ImageSettings(_Strict):
    base_image: str = "sera-base:bookworm"
    build_network: str = "none"
    sandbox: Literal["auto", "docker", "local"] = "auto"


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


class PlatformDefaults(_Strict):
    model_server: str
    owner: str = "sera"
    retries: int = Field(2, ge=0, le=20)
    retry_delay_s: float = Field(30.0, ge=0)
    tags: list[str] = ["sera"]


class PlatformConfig(_Strict):
    storage_root: Path
    repos_dir: Path = Path("repos")
    registry: RegistrySettings = RegistrySettings()
    images: ImageSettings = ImageSettings()
    model_servers: dict[str, ModelServer] = Field(min_length=1)
    defaults: PlatformDefaults
    training: TrainingPlatformSettings = TrainingPlatformSettings()
    github: MirrorSettings | None = None
    source_file: Path | None = Field(None, exclude=True)

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


class SynthSettings(_Strict):
    """Judge and synthetic-PR writer calls (SERA: temperature 0.6, 4096 tokens, judge retried 3 times)."""

    temperature: float = Field(0.6, ge=0, le=2)
    max_tokens: int = Field(4096, ge=1)
    judge_retries: int = Field(3, ge=1, le=10)
    writer_retries: int = Field(3, ge=1, le=10)
    demo_issues: Path | None = None
    observation_chars: int = Field(2000, ge=100)


class VerifySettings(_Strict):
    threshold: float = Field(1.0, ge=0, le=1)


class BatchSettings(_Strict):
    """Instances are mapped in batches, not one by one, to stay far below Airflow's max_map_length."""

    batch_size: int = Field(8, ge=1, le=1000)
    min_success_fraction: float = Field(0.5, ge=0, le=1)


class RepoSpec(_Strict):
    """One repository: where it comes from, which commits, how to install it, and per-stage settings."""

    name: str
    source: str
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
    python_version: str | None = None
    top_level_folder: list[str] = []
    max_folder_depth: int | None = Field(3, ge=0)
    fns_per_repo: int = Field(5000, ge=1)
    insts_per_fn: int = Field(1, ge=1)
    seed: int = 0
    model_server: str | None = None
    rollout: RolloutSettings = RolloutSettings()
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
            raise ValueError("give a local path, a git URL, or bundled:<sample name>")
        return value

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
        "storage_root": _resolve(base, config.storage_root),
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
    if spec.model_server is not None and spec.model_server not in platform.model_servers:
        raise ConfigError(path, "model_server", f"'{spec.model_server}' is not defined in {platform.source_file} "
                          f"(model_servers: {', '.join(sorted(platform.model_servers))})")
    base = path.resolve().parent
    synth = spec.synth.model_copy(update={"demo_issues": _resolve(base, spec.synth.demo_issues)})
    return spec.model_copy(update={
        "source": resolve_source(spec.source, base),
        "synth": synth,
        "owner": spec.owner or platform.defaults.owner,
        "model_server": spec.model_server or platform.defaults.model_server,
        "source_file": path.resolve(),
    })


def resolve_source(source: str, base: Path) -> str:
    """Local paths become absolute; URLs and bundled:<name> stay as they are."""
    if source.startswith("bundled:") or re.match(r"^[a-z+]+://", source) or re.match(r"^[\w.-]+@[\w.-]+:", source):
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
