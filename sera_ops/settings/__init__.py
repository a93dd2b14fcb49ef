"""Settings: `config/platform.yaml` and `config/repos/<name>.yaml`, validated by pydantic (a leaf of the package).

Takes YAML files in and gives out typed, documented settings (`PlatformConfig`, `RepoSpec`, `TrainSettings`) or a
`ConfigError` naming the file and the field. `base` holds what both files share (secrets, strict models), `platform`
and `repo` the two files' models, `training` the training settings, `loading` the file reading. Imports no stage.
"""

from sera_ops.settings.base import (
    PROJECT_ROOT,
    ConfigError,
    SecretLookup,
    SecretRef,
    is_storage_url,
    pool_name,
    resolve_secret,
)
from sera_ops.settings.loading import (
    default_platform_path,
    load_platform,
    load_repo,
    load_repos,
    repo_files,
    resolve_source,
)
from sera_ops.settings.platform import (
    PLATFORM_CONFIG_ENV,
    BuildEnv,
    ImageSettings,
    MirrorSettings,
    ModelServer,
    PlatformConfig,
    PlatformDefaults,
    RegistrySettings,
)
from sera_ops.settings.repo import (
    EVAL_MODELS,
    IMAGE_SOURCES,
    REPO_NAME_PATTERN,
    SWESMITH_REPO_NAME,
    BatchSettings,
    CostLimits,
    CustomImage,
    EvalSettings,
    GitHubDemoIssues,
    PostprocessOptions,
    RepoSpec,
    RolloutSettings,
    SandboxLimits,
    SweBenchImages,
    SweSmithImages,
    SynthSettings,
    VerifySettings,
)
from sera_ops.settings.training import KubernetesSettings, TrainingPlatformSettings, TrainSettings

__all__ = [
    "BuildEnv", "BatchSettings", "ConfigError", "CostLimits", "CustomImage", "EVAL_MODELS", "EvalSettings",
    "GitHubDemoIssues", "IMAGE_SOURCES", "ImageSettings", "KubernetesSettings", "MirrorSettings", "ModelServer",
    "PLATFORM_CONFIG_ENV", "PROJECT_ROOT", "PlatformConfig", "PlatformDefaults", "PostprocessOptions",
    "REPO_NAME_PATTERN", "RegistrySettings", "RepoSpec", "RolloutSettings", "SWESMITH_REPO_NAME", "SandboxLimits",
    "SecretLookup", "SecretRef", "SweBenchImages", "SweSmithImages", "SynthSettings", "TrainSettings",
    "TrainingPlatformSettings", "VerifySettings", "default_platform_path", "is_storage_url", "load_platform",
    "load_repo", "load_repos", "pool_name", "repo_files", "resolve_secret", "resolve_source",
]
