"""Configuration: defaults are SERA's, relative paths follow the file, and every error names file and field."""
from pathlib import Path

import pytest

from sera_ops.settings import ConfigError, load_platform, load_repo, load_repos, resolve_secret

PLATFORM = """
storage_root: store
model_servers:
  teacher: {base_url: "http://127.0.0.1:9/v1", model: m, api_key: {env: SERA_TEST_KEY}}
defaults: {model_server: teacher}
"""


@pytest.fixture
def platform_file(tmp_path: Path) -> Path:
    (tmp_path / "repos").mkdir()
    path = tmp_path / "platform.yaml"
    path.write_text(PLATFORM)
    return path


def write_repo(platform_file: Path, name: str, text: str) -> Path:
    path = platform_file.parent / "repos" / f"{name}.yaml"
    path.write_text(text)
    return path


def test_paths_resolve_against_the_file_not_the_cwd(platform_file, monkeypatch, tmp_path):
    monkeypatch.chdir("/")
    platform = load_platform(platform_file)
    assert platform.storage_root == tmp_path / "store"
    spec = load_repo(write_repo(platform_file, "demo", "source: ../code\n"), platform)
    assert spec.source == str(tmp_path / "code")


def test_sera_defaults(platform_file):
    platform = load_platform(platform_file)
    spec = load_repo(write_repo(platform_file, "demo", "source: bundled:tinyledger\n"), platform)
    assert (spec.rollout.step_limit, spec.rollout.temperature, spec.verify.threshold) == (115, 0.6, 1.0)
    assert (spec.n_commits, spec.lookback_days, spec.fns_per_repo, spec.insts_per_fn) == (5, 365, 5000, 1)
    assert spec.max_folder_depth == 3 and spec.install_cmds == ["pip install -e ."]
    assert spec.postprocess.format == "hermes" and spec.model_server == "teacher" and spec.dag_id == "sera__demo"


@pytest.mark.parametrize(("text", "field", "hint"), [
    ("source: x\nrollout: {step_limit: 0}\n", "rollout.step_limit", "greater than or equal to 1"),
    ("source: x\nverify: {threshold: 1.5}\n", "verify.threshold", "less than or equal to 1"),
    ("source: x\nfns_per_rep: 3\n", "fns_per_rep", "unknown setting"),
    ("n_commits: 2\n", "source", "required setting is missing"),
    ("source: x\nmodel_server: nope\n", "model_server", "not defined"),
    ("source: x\npostprocess: {format: json}\n", "postprocess.format", "hermes"),
    ("source: x\nname: other\n", "name", "must match the file name"),
])
def test_errors_name_file_and_field(platform_file, text, field, hint):
    path = write_repo(platform_file, "bad", text)
    with pytest.raises(ConfigError) as caught:
        load_repo(path, load_platform(platform_file))
    assert caught.value.field == field
    assert str(path) in str(caught.value) and f"field '{field}'" in str(caught.value)
    assert hint in str(caught.value)


def test_yaml_syntax_and_shape_errors_name_the_file(platform_file):
    platform = load_platform(platform_file)
    for text in ("source: [unclosed\n", "- a list\n"):
        path = write_repo(platform_file, "broken", text)
        with pytest.raises(ConfigError, match="broken.yaml"):
            load_repo(path, platform)


def test_one_bad_repo_file_does_not_hide_the_good_ones(platform_file):
    write_repo(platform_file, "good", "source: bundled:tinyledger\n")
    write_repo(platform_file, "bad", "source: x\nrollout: {temperature: hot}\n")
    specs, errors = load_repos(load_platform(platform_file))
    assert [s.name for s in specs] == ["good"]
    assert len(errors) == 1 and errors[0].field == "rollout.temperature"


def test_platform_errors(tmp_path):
    path = tmp_path / "platform.yaml"
    path.write_text(PLATFORM.replace("model_server: teacher", "model_server: missing"))
    with pytest.raises(ConfigError, match="defaults.model_server.*'missing' is not one of model_servers"):
        load_platform(path)
    path.write_text(PLATFORM.replace('"http://127.0.0.1:9/v1"', "localhost:9"))
    with pytest.raises(ConfigError, match=r"model_servers.teacher.base_url.*http\(s\) URL"):
        load_platform(path)
    with pytest.raises(ConfigError, match="file not found"):
        load_platform(tmp_path / "absent.yaml")
    path.write_text(PLATFORM.replace("storage_root: store", "storage_root: s3://bucket/sera")
                    + "training: {backend: kubernetes}\n")
    with pytest.raises(ConfigError, match="training.backend.*mounted volume.*s3://bucket/sera"):
        load_platform(path)
    path.write_text(PLATFORM.replace("storage_root: store", "storage_root: s3://bucket/sera"))
    assert load_platform(path).storage_root == "s3://bucket/sera"


def test_secrets_come_from_connection_then_env(platform_file, monkeypatch):
    ref = load_platform(platform_file).model_servers["teacher"].api_key
    assert resolve_secret(ref) is None
    monkeypatch.setenv("SERA_TEST_KEY", "from-env")
    assert resolve_secret(ref) == "from-env"
    ref = ref.model_copy(update={"connection": "conn"})
    assert resolve_secret(ref, lambda conn_id: "from-connection") == "from-connection"
    assert resolve_secret(ref, lambda conn_id: None) == "from-env"
