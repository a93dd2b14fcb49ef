"""`config/platform.yaml`: what every repository shares — storage, registry, images, model servers, GitHub, training."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from sera_ops.settings.base import FieldProblem, HttpUrl, SecretRef, StrictModel, is_storage_url, pool_name
from sera_ops.settings.training import TrainingPlatformSettings

PLATFORM_CONFIG_ENV = "SERA_PLATFORM_CONFIG"


class ModelServer(StrictModel):
    """An OpenAI-compatible endpoint serving a teacher model (vLLM, SGLang, a hosted API, or the scripted teacher).

    At most `parallel_batches` batch tasks use it at once (its Airflow pool `sera_model_<name>`), each with
    `concurrency` requests in flight and `concurrency` × `episodes_per_slot` episodes running.
    """

    base_url: HttpUrl
    """The OpenAI-compatible API root, e.g. `http://gpu-node:8000/v1` (a trailing `/` is dropped); SERA's
    `distill.model.url`."""
    model: str
    """The model name sent with every request (the server's served model name, e.g. `GLM-4.6`); unlike SERA's
    `distill.model.name`, without litellm's `openai/` prefix."""
    concurrency: int = Field(4, ge=1, le=256)
    """Request slots: at most this many requests in flight to this server from one batch task, shared by its agent
    episodes and its judge and writer calls. (SERA ran `num_workers`, default 32, agents per replica.)"""
    episodes_per_slot: int = Field(2, ge=1, le=16)
    """Agent episodes per request slot: an episode spends part of its time running commands in its sandbox, so a
    batch task runs `concurrency` × this many episodes to keep all `concurrency` request slots busy. Batches are
    sized in whole rounds of that many episodes."""
    parallel_batches: int = Field(2, ge=1, le=256)
    """Slots of the server's Airflow pool `sera_model_<name>`: how many batch tasks use it at once. With
    `concurrency` it is the server's capacity, by which a repository's instances are shared among its
    `model_servers`."""
    api_key: SecretRef | None = None
    """The API key (a secret reference, never the value). None: a placeholder key, which local vLLM and SGLang
    servers accept."""
    timeout_s: float = Field(300.0, gt=0)
    """Seconds one request may take before it fails (and is retried); the preflight `GET /models` before a batch
    waits at most 10 s of it."""
    max_retries: int = Field(3, ge=0, le=20)
    """Retries of a failed request (connection errors, 429, 5xx) by the OpenAI client, with its backoff."""
    tool_calls: bool = True
    """The agent's commands are native tool calls to a `bash` function (the server must parse tool calls, e.g.
    vLLM's `--tool-call-parser`), as in SERA's SWE-agent config; false: they are read from a fenced
    `mswea_bash_command` block in the reply's text."""
    price_per_mtok_in: float = Field(0.0, ge=0)
    """USD per million prompt tokens, for a hosted teacher's cost and `cost_limits` (0: free, e.g. self-hosted).
    Cached-prompt discounts are not modelled, so a cost is an upper bound. Not a SERA setting (it tracked no cost)."""
    price_per_mtok_out: float = Field(0.0, ge=0)
    """USD per million completion tokens, for a hosted teacher's cost and `cost_limits` (0: free, e.g.
    self-hosted)."""

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price_per_mtok_in + completion_tokens * self.price_per_mtok_out) / 1e6


class RegistrySettings(StrictModel):
    """Where built images go: `<url>/<namespace>/<repo>:<commit12>` (and shared dependency layers
    `<url>/<namespace>/<repo>-deps:<key16>`). SERA pushed only when `generate.docker.docker_org` was set."""

    url: str = "127.0.0.1:5000"
    """The registry's host and port (default: the local registry of `scripts/services.sh`)."""
    namespace: str = "sera"
    """The path under `url` that image names start with (SERA's `docker_org`)."""
    push: bool = True
    """Push each built image and dependency layer, so other workers and later runs reuse them instead of
    rebuilding; false keeps them in the building engine only."""
    credentials: SecretRef | None = None
    """The password or token for `username` (a secret reference); None: no login."""
    username: str | None = None
    """The login name for a registry that needs one (used together with `credentials`)."""
    insecure: bool = False
    """Speak plain HTTP to this registry (loopback registries always are)."""


BuildEnv = dict[str, str | SecretRef]
"""Environment for install steps: plain values, or secrets taken from a connection or env var at build time."""


class ImageSettings(StrictModel):
    """How commit images are built. Install steps get `build_env` (never written into an image) and the engine's
    normal network by default: real projects resolve their dependencies from an index, a proxy or a wheelhouse."""

    base_image: str = "sera-base:bookworm"
    """The base of a repository without `python_version` (the default is Debian bookworm's Python 3.11, built by
    `scripts/build_base_image.sh`). A base needs `python3`, `pip`, `git` and `bash`; SERA built on
    `jyangballin/swesmith.x86_64` with a conda environment instead."""
    base_images: dict[str, str] | str = {"3.11": "sera-base:bookworm"}
    """Base per `python_version`: a mapping ("3.12": image) or a template such as "python:{version}-slim". A
    version without a base fails that commit, naming the version and the configured bases; the built image's Python
    must match the version."""
    build_network: str = "bridge"
    """Docker network of the steps that run `install_cmds` (the engine's normal network; `host` for an engine
    without a bridge, such as the local one; `none` for offline builds). A commit's own source is always installed
    without network."""
    build_env: BuildEnv = {}
    """Environment of the install steps, e.g. `PIP_INDEX_URL`, `PIP_TRUSTED_HOST`, `UV_INDEX_URL`; a value may be a
    secret reference. Passed through a file the step deletes before its layer is committed, so it is never in an
    image layer, its config or a log; a repository's `install_env` overrides entries."""
    build_timeout_s: float = Field(1800.0, gt=0)
    """Seconds one install step may run before it is stopped and the commit's build fails."""
    sandbox: Literal["auto", "docker", "local"] = "auto"
    """Where episodes run: `auto`, in containers when a Docker engine answers, else locally; `docker`, containers
    only (no engine is an error); `local`, in the worker under bubblewrap, with no image built (so `install_cmds`
    never run)."""
    allow_unconfined_local: bool = False
    """Let a real teacher drive local episodes without bubblewrap (its commands then run as the worker); without it
    only the scripted teacher may."""

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


class MirrorSettings(StrictModel):
    """Where repositories are mirrored (stage 1): a GitHub organisation, private by default."""

    api_url: HttpUrl = "https://api.github.com"
    """The GitHub REST API that mirrors are created through (api.github.com, or a GitHub Enterprise server's); git
    then pushes over HTTPS to the clone URL it gives."""
    organisation: str = Field(min_length=1)
    """The organisation login the mirrors are created in (SERA's `generate.docker.gh_mirror_org`)."""
    private: bool = True
    """Create new mirrors private (SERA's, made through swesmith, were public). An existing mirror's visibility is
    never changed, only warned about."""
    token: SecretRef | None = SecretRef(env="GITHUB_TOKEN")
    """The token that creates and pushes to mirrors (needs the `workflow` scope when the history contains
    `.github/workflows`); given to git only through its environment, never in a URL, argv or file. Also the
    default token of `synth.demo_issues_from` on the same `api_url`."""
    name_prefix: str = ""
    """Put in front of the repository's name to name its mirror (`<organisation>/<name_prefix><name>`): one mirror
    per source with every branch and tag, where SERA made one `<owner>__<repo>.<commit8>` per commit."""
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


class PlatformDefaults(StrictModel):
    """What every repository's DAGs get unless its own file says otherwise."""

    model_server: str
    """The teacher of a repository that names none: one of `model_servers` (required)."""
    owner: str = "sera"
    """The Airflow owner of a repository's DAGs when its file gives no `owner`."""
    retries: int = Field(2, ge=0, le=20)
    """Airflow retries of every task (at least 1 is used). Only transient errors are retried: an error retrying
    cannot fix fails its task at once."""
    retry_delay_s: float = Field(30.0, ge=0)
    """Seconds before a task's first retry; each later one waits twice as long, at most 10 minutes (or this
    delay, if longer)."""
    tags: list[str] = ["sera"]
    """Airflow tags of every SERA DAG, next to a repository's own `tags`."""


class PlatformConfig(StrictModel):
    """`config/platform.yaml` (or `$SERA_PLATFORM_CONFIG`): what every repository shares. Relative paths are resolved
    against this file's directory."""

    storage_root: Path | str
    """The run store (required): a local directory (a shared filesystem for several workers), or an object-storage
    URL (`s3://bucket/prefix`, `gs://bucket/prefix`). It replaces SERA's `experiment_dir`."""
    storage_conn_id: str | None = None
    """The Airflow connection with the object store's credentials (e.g. `aws_default`); outside Airflow, storage
    options come from $SERA_STORAGE_OPTIONS. Never put credentials in this file."""
    local_cache_dir: Path | None = None
    """Worker-local disk for git clones, snapshots and build locks when `storage_root` is remote (default
    `$XDG_CACHE_HOME/sera`, else ~/.cache/sera). Unused for a local `storage_root`, which keeps them itself."""
    repos_dir: Path = Path("repos")
    """The directory of the repository files (`<name>.yaml`, one DAG each); relative to this file."""
    registry: RegistrySettings = RegistrySettings()
    """The registry commit images are pushed to and pulled from."""
    images: ImageSettings = ImageSettings()
    """How commit images are built, and where episodes run."""
    model_servers: dict[str, ModelServer] = Field(min_length=1)
    """The teachers, by name (at least one): repositories, `synth.model_server` and the DAG params refer to them by
    that name."""
    defaults: PlatformDefaults
    """Defaults for every repository (required, for its `model_server`)."""
    training: TrainingPlatformSettings = TrainingPlatformSettings()
    """Where training DAGs run their training (in the worker by default)."""
    github: MirrorSettings | None = None
    """Mirroring into a GitHub organisation; None (the default) turns it off and the `mirror` task is skipped."""
    source_file: Path | None = Field(None, exclude=True)
    """The file these settings were read from, filled in by the loader; not a setting."""

    @field_validator("storage_root", mode="after")
    @classmethod
    def _local_root_is_a_path(cls, value: Path | str) -> Path | str:
        return value if is_storage_url(value) else Path(value)

    @model_validator(mode="after")
    def _pod_training_needs_a_mounted_store(self) -> PlatformConfig:
        """The training pod reads the dataset and writes the model through a mounted claim; on object storage the
        `local` backend stages them instead. A pod given URLs it cannot open would fail only after scheduling."""
        if self.training.backend == "kubernetes" and is_storage_url(self.storage_root):
            raise FieldProblem("training.backend", f"the kubernetes training pod needs storage_root on a mounted "
                                f"volume (training.kubernetes.storage_claim), not {self.storage_root}; use a "
                                "ReadWriteMany claim for the store, or training.backend: local")
        return self

    @model_validator(mode="after")
    def _default_server_exists(self) -> PlatformConfig:
        if self.defaults.model_server not in self.model_servers:
            raise FieldProblem("defaults.model_server",
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


SERVER_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


