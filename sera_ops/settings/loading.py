"""Reading the YAML files into settings: errors name the file and the field; relative paths resolve against the file.

Relative paths are resolved against the file that contains them, never against the working directory (SERA's paths
broke whenever it was started from elsewhere). One bad repository file is reported and skipped, never fatal to the
others (`load_repos`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sera_ops.settings.base import PROJECT_ROOT, ConfigError, FieldProblem, is_storage_url
from sera_ops.settings.platform import PLATFORM_CONFIG_ENV, PlatformConfig
from sera_ops.settings.repo import IMAGE_SOURCES, RepoSpec


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
    if isinstance(ctx_error, FieldProblem):
        return ConfigError(path, ctx_error.field, ctx_error.problem)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown setting; check the spelling against the configuration reference (docs/reference/)"
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
