"""Local container services: the Docker engine, the loopback registry and the base image from scripts/services.sh,
plus static checks of the bring-up scripts and docker-compose.yaml (those need no engine)."""
import io
import os
import subprocess
import urllib.request
import uuid

import docker
import pytest
import yaml

from tests.support import ROOT
from tests.support.parts import require

BASE_IMAGE = os.environ.get("SERA_BASE_IMAGE", "sera-base:bookworm")
SCRIPTS = [ROOT / "scripts" / "services.sh", ROOT / "scripts" / "build_base_image.sh", ROOT / "scripts" / "test.sh",
           ROOT / ".ci" / "run"]
AIRFLOW_SERVICES = {"airflow-init", "api-server", "scheduler", "dag-processor", "triggerer"}


@pytest.fixture(scope="module")
def docker_client():
    """A client for the engine named by DOCKER_HOST; skips the docker tests when there is none (`parts.require`)."""
    require("docker")
    client = docker.from_env(timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="module")
def registry():
    """Address of the loopback registry; skips when SERA_REGISTRY is not set."""
    require("registry")
    address = os.environ["SERA_REGISTRY"]
    return address


def run_in(client, image: str, command: list[str]) -> str:
    """Output of `command` in a throwaway container without network, as the sandbox runs agent commands."""
    return client.containers.run(image, command, network_mode="none", remove=True).decode()


@pytest.mark.docker
def test_engine_answers_ping(docker_client):
    assert docker_client.ping() is True


@pytest.mark.docker
def test_base_image_runs_python_and_git_offline(docker_client):
    image = docker_client.images.get(BASE_IMAGE)
    # installs reach an index or wheelhouse through images.build_env; the base does not force offline pip
    assert not any(item.startswith("PIP_NO_INDEX") for item in image.attrs["Config"]["Env"])
    probe = "import ssl, sqlite3, sys; print(sys.version_info[:2])"
    version = run_in(docker_client, BASE_IMAGE, ["python3", "-c", probe])
    assert version.strip() == "(3, 11)"
    assert run_in(docker_client, BASE_IMAGE, ["git", "--version"]).startswith("git version ")
    assert run_in(docker_client, BASE_IMAGE, ["git", "config", "--system", "user.email"]).strip() == "sera@localhost"


@pytest.mark.docker
def test_image_built_from_base_round_trips_through_registry(docker_client, registry):
    repository = f"{registry}/sera-test/smoke"
    tag = uuid.uuid4().hex[:12]
    reference = f"{repository}:{tag}"
    dockerfile = f'FROM {BASE_IMAGE}\nRUN echo "built {tag}" > /marker\nCMD ["cat", "/marker"]\n'
    digest = None
    try:
        image, _ = docker_client.images.build(
            fileobj=io.BytesIO(dockerfile.encode()), tag=reference, pull=False, network_mode="none", rm=True
        )
        built_id = image.id
        events = list(docker_client.images.push(repository, tag=tag, stream=True, decode=True))
        errors = [event["error"] for event in events if "error" in event]
        assert not errors, errors
        digest = next(event["aux"]["Digest"] for event in events if "Digest" in event.get("aux", {}))

        docker_client.images.remove(reference)
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.images.get(reference)
        pulled = docker_client.images.pull(repository, tag=tag)
        assert pulled.id == built_id
        assert run_in(docker_client, reference, []).strip() == f"built {tag}"
    finally:
        for leftover in docker_client.images.list(name=repository):
            docker_client.images.remove(leftover.id, force=True)
        if digest:
            manifest_url = f"http://{registry}/v2/sera-test/smoke/manifests/{digest}"
            with urllib.request.urlopen(urllib.request.Request(manifest_url, method="DELETE"), timeout=10) as response:
                assert response.status == 202


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def test_compose_declares_the_stack(compose):
    """LocalExecutor by default; Celery (redis + workers), a registry, the scripted teacher and vLLM are profiles."""
    services = compose["services"]
    assert set(services) == AIRFLOW_SERVICES | {"postgres", "redis", "worker", "registry", "scripted-teacher", "vllm"}
    assert {name for name, service in services.items() if "profiles" not in service} == AIRFLOW_SERVICES | {"postgres"}
    assert services["redis"]["profiles"] == services["worker"]["profiles"] == ["celery"]
    # the local engine has no bridge network: every service is on the host's loopback
    assert {service["network_mode"] for service in services.values()} == {"host"}


def test_compose_airflow_services_share_image_and_config(compose):
    for name in AIRFLOW_SERVICES | {"worker"}:
        service = compose["services"][name]
        assert service["image"].startswith("sera-airflow:")
        environment = service["environment"]
        assert environment["AIRFLOW__CORE__EXECUTOR"] == "${AIRFLOW_EXECUTOR:-LocalExecutor}"
        assert environment["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/sera/dags"
        assert environment["SERA_PLATFORM_CONFIG"] == "/opt/sera/config/platform.yaml"
        assert environment["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        # Secrets must come from the operator's environment, never from a default committed here.
        for key, variable in (("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW_JWT_SECRET"),
                              ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW_FERNET_KEY")):
            assert environment[key].startswith(f"${{{variable}:?")
        assert "${POSTGRES_PASSWORD:?" in environment["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    for worker in ("scheduler", "worker"):
        assert any(volume.endswith(":/var/run/docker.sock") for volume in compose["services"][worker]["volumes"])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_script_is_valid_executable_bash(script):
    assert os.access(script, os.X_OK), f"{script} is not executable"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_env_prints_absolute_socket_and_registry(tmp_path):
    environment = {**os.environ, "SERA_SERVICES_DIR": "relative/state", "SERA_REGISTRY_PORT": "5999"}
    result = subprocess.run(
        [str(SCRIPTS[0]), "env"], cwd=tmp_path, env=environment, capture_output=True, text=True, check=True
    )
    assert result.stdout.splitlines() == [
        f"export DOCKER_HOST=unix://{tmp_path}/relative/state/docker.sock",
        "export SERA_REGISTRY=127.0.0.1:5999",
    ]


def test_status_fails_when_nothing_runs(tmp_path):
    environment = {**os.environ, "SERA_SERVICES_DIR": str(tmp_path), "SERA_REGISTRY_PORT": "1"}
    result = subprocess.run([str(SCRIPTS[0]), "status"], env=environment, capture_output=True, text=True)
    assert result.returncode == 1
    assert "[services] dockerd not answering" in result.stdout


def test_no_mirror_host_is_hard_coded():
    for script in SCRIPTS:
        assert "debian.org" not in script.read_text(), script

