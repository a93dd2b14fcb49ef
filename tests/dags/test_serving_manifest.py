"""The vLLM server of a trained student (sera_ops.train.serving), checked offline like the deploy/k8s manifests: the
rendered Deployment and Service convert field by field into the `kubernetes` client's models, serve what the
model folder holds (a LoRA adapter on its base, or full weights) with the tool-call parser of the training format,
and fit together (selector, ports, probes, GPUs, the read-only store). The model folders are written by hand with
the files run_sft leaves (tests/unit/train/test_train.py checks adapter_config.json's `r` and base path)."""

import json
import re
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

from sera_ops.settings import ModelServer, PlatformConfig, RepoSpec
from sera_ops.train import serving
from sera_ops.train.serving import (
    ServingError,
    ServingPlan,
    model_server_for,
    serving_plan_for,
    vllm_manifests,
)
from tests.dags.test_k8s_manifests import flags, model_name, of_kind, port_names, valid

CLAIM, GPU = "sera-store", "nvidia.com/gpu"
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LONG_REPO = "a" * 20 + "-very_long-repository-name-" + "z" * 17  # 64 characters, the longest a repository may have


def _platform(root: Path, **kubernetes) -> PlatformConfig:
    return PlatformConfig.model_validate({
        "storage_root": str(root), "defaults": {"model_server": "glm"},
        "model_servers": {"glm": {"base_url": "http://sera-teacher-glm:8000/v1", "model": "GLM-4.6"}},
        "training": {"backend": "kubernetes", "kubernetes": {"storage_claim": CLAIM, "namespace": "sera-eval",
                                                             "node_selector": {"gpu": "h100"}, **kubernetes}}})


def _spec(name: str = "tinyledger", format: str = "hermes") -> RepoSpec:
    return RepoSpec(name=name, source="/nowhere", postprocess={"format": format})


def _model(root: Path, job: str, *, lora: bool, rank: int | None = 32, base: Path | None = None) -> Path:
    """A finished model folder as run_sft publishes it: metrics.json, and an adapter or full weights."""
    folder = root / "tinyledger" / "models" / job
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text("{}")
    if lora:
        adapter = {"base_model_name_or_path": str(base or root / "bases" / "qwen3-8b"), "peft_type": "LORA"}
        (folder / "adapter_config.json").write_text(json.dumps(adapter | ({"r": rank} if rank else {})))
    else:
        (folder / "config.json").write_text("{}")
    return folder


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "srv" / "sera"


@pytest.fixture
def lora_plan(root) -> ServingPlan:
    return serving_plan_for(_platform(root), _spec(), _model(root, "manual__2026-01-02", lora=True))


@pytest.fixture
def full_plan(root) -> ServingPlan:
    return serving_plan_for(_platform(root), _spec(format="xml"), _model(root, "full-job", lora=False), gpus=2)


def _parts(plan: ServingPlan) -> tuple[dict, dict, dict]:
    deployment, service = vllm_manifests(plan)
    return deployment, service, deployment["spec"]["template"]["spec"]


@pytest.mark.parametrize("which", ["lora_plan", "full_plan"])
def test_manifests_convert_to_kubernetes_models(which, request):
    plan = request.getfixturevalue(which)
    manifests = vllm_manifests(plan)
    assert [(doc["apiVersion"], doc["kind"]) for doc in manifests] == [("apps/v1", "Deployment"), ("v1", "Service")]
    for doc in manifests:
        assert valid(doc, model_name(doc), f"{which}:{doc['kind']}") == []
        assert doc["metadata"]["namespace"] == "sera-eval"


def test_lora_plan_serves_the_adapter_on_its_base(lora_plan, root):
    (container,) = _parts(lora_plan)[2]["containers"]
    adapter = root / "tinyledger" / "models" / "manual__2026-01-02"
    assert container["command"] == ["vllm", "serve"]
    assert container["args"][0] == str(root / "bases" / "qwen3-8b") == lora_plan.base_path
    assert "--enable-lora" in container["args"]
    args = flags(container)
    assert args["--lora-modules"] == f"student={adapter}"
    assert args["--max-lora-rank"] == "32" and args["--served-model-name"] == "base"


def test_lora_rank_is_rounded_up_to_a_vllm_rank_or_taken_from_the_parameter(root):
    platform = _platform(root)
    assert serving_plan_for(platform, _spec(), _model(root, "r12", lora=True, rank=12)).max_lora_rank == 16
    unranked = _model(root, "unranked", lora=True, rank=None)
    with pytest.raises(ServingError, match="pass lora_rank"):
        serving_plan_for(platform, _spec(), unranked)
    assert serving_plan_for(platform, _spec(), unranked, lora_rank=64).max_lora_rank == 64


def test_full_plan_serves_the_weights_under_the_served_name(full_plan, root):
    (container,) = _parts(full_plan)[2]["containers"]
    assert container["args"][0] == str(root / "tinyledger" / "models" / "full-job") == full_plan.model_path
    assert flags(container)["--served-model-name"] == "student"
    assert flags(container)["--tensor-parallel-size"] == "2"
    assert not {"--enable-lora", "--max-lora-rank"} & {arg.split("=")[0] for arg in container["args"]}


@pytest.mark.parametrize(("format", "parser"), [("hermes", "hermes"), ("xml", None), ("raw", None)])
def test_the_tool_call_parser_follows_the_training_format(root, format, parser):
    plan = serving_plan_for(_platform(root), _spec(format=format), _model(root, "job", lora=True))
    (container,) = _parts(plan)[2]["containers"]
    assert flags(container).get("--tool-call-parser") == parser
    assert ("--enable-auto-tool-choice" in container["args"]) is (parser is not None)
    assert plan.tool_calls is (parser is not None) is model_server_for(plan)["tool_calls"]


@pytest.mark.parametrize("which", ["lora_plan", "full_plan"])
def test_service_selects_the_pods_on_the_served_port(which, request):
    plan = request.getfixturevalue(which)
    deployment, service, pod = _parts(plan)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pod_labels["app.kubernetes.io/name"] == "sera-student" and pod_labels["sera.dev/repo"] == "tinyledger"
    (container,) = pod["containers"]
    (port,) = service["spec"]["ports"]
    (container_port,) = container["ports"]
    assert port["port"] == container_port["containerPort"] == plan.port
    assert port["targetPort"] in port_names(container)
    assert f"--port={plan.port}" in container["args"]
    readiness = container["readinessProbe"]["httpGet"]
    assert readiness["path"] in ("/v1/models", "/health")
    assert readiness["port"] in (container_port["name"], container_port["containerPort"])


@pytest.mark.parametrize(("which", "gpus"), [("lora_plan", 1), ("full_plan", 2)])
def test_gpus_and_the_read_only_store(which, gpus, request, root):
    plan = request.getfixturevalue(which)
    _, _, pod = _parts(plan)
    (container,) = pod["containers"]
    resources = container["resources"]
    assert resources["requests"] == resources["limits"] and resources["limits"][GPU] == str(gpus)
    assert pod["nodeSelector"] == {"gpu": "h100"}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    store = mounts[str(root)]  # where the training pod mounted it: the model's recorded paths hold
    assert store["readOnly"] is True
    assert volumes[store["name"]]["persistentVolumeClaim"] == {"claimName": CLAIM, "readOnly": True}
    assert ("/dev/shm" in mounts) is (gpus > 1)  # tensor-parallel ranks exchange through shared memory
    assert Path(plan.model_path).is_relative_to(store["mountPath"])


def test_names_and_labels_are_valid_for_a_long_repository_and_job(root):
    platform, spec = _platform(root), _spec(name=LONG_REPO)
    assert len(LONG_REPO) == 64  # the spec accepted it
    jobs = ["manual__2026-11-25T07_00_00.123456_00_00", "manual__2026-11-25T07_00_00.123457_00_00"]
    names = set()
    for job in jobs:
        plan = serving_plan_for(platform, spec, _model(root, job, lora=False))
        for doc in vllm_manifests(plan):
            name = doc["metadata"]["name"]
            assert DNS_1035.match(name) and len(name) <= 63, name
            assert all(LABEL_VALUE.match(value) and len(value) <= 63 for value in doc["metadata"]["labels"].values())
            names.add(name)
        assert ModelServer.model_validate(model_server_for(plan)).base_url.startswith(f"http://{plan.name}.")
    assert len(names) == 2  # cut names keep a hash of the whole, so two jobs never share a server


def test_model_server_for_loads_as_the_platform_model_server(lora_plan, full_plan):
    student = ModelServer.model_validate(model_server_for(lora_plan))
    assert student.base_url == f"http://{lora_plan.name}.sera-eval.svc:8000/v1"
    assert (student.model, student.tool_calls, student.api_key) == ("student", True, None)
    base = ModelServer.model_validate(model_server_for(lora_plan, "base"))
    assert (base.base_url, base.model) == (student.base_url, "base")
    assert ModelServer.model_validate(model_server_for(full_plan)).tool_calls is False
    with pytest.raises(ServingError, match="no base model"):
        model_server_for(full_plan, "base")


def test_the_plan_survives_a_round_trip_through_json(lora_plan):
    """The setup task hands the plan to the teardown task through XCom."""
    assert ServingPlan.from_dict(json.loads(json.dumps(lora_plan.to_dict()))) == lora_plan


def test_the_server_runs_the_teachers_vllm():
    (teacher,) = of_kind("Deployment")["sera-teacher-glm"]["spec"]["template"]["spec"]["containers"]
    assert serving.VLLM_IMAGE == teacher["image"]


def test_what_cannot_be_served_is_refused(root, tmp_path):
    spec = _spec()
    unfinished = _model(root, "unfinished", lora=False)
    (unfinished / "metrics.json").unlink()
    with pytest.raises(ServingError, match="not a finished model"):
        serving_plan_for(_platform(root), spec, unfinished)
    outside = _model(root, "outside", lora=True, base=tmp_path / "elsewhere" / "qwen3")
    with pytest.raises(ServingError, match="not under storage_root"):
        serving_plan_for(_platform(root), spec, outside)
    with pytest.raises(ServingError, match="storage_claim"):
        serving_plan_for(_platform(root, storage_claim=None), spec, _model(root, "unclaimed", lora=False))
    with pytest.raises(ServingError, match="gpus"):
        serving_plan_for(_platform(root), spec, _model(root, "cpu", lora=False), gpus=0)


class _FakeApi:
    """Records the client calls; create answers 409 for existing objects, delete 404 for missing ones."""

    calls: list[tuple[str, str]] = []
    existing: set[str] = set()

    def __init__(self, api_client):
        assert api_client == "client"

    def __getattr__(self, method):
        def call(*args, **kwargs):
            name = args[1]["metadata"]["name"] if method.startswith("create_") else args[0]
            _FakeApi.calls.append((method, name))
            if method.startswith("create_") and name in _FakeApi.existing:
                raise ApiException(status=409)
            if method.startswith("delete_") and name not in _FakeApi.existing:
                raise ApiException(status=404)

        return call


def test_apply_replaces_what_exists_and_delete_ignores_what_is_gone(lora_plan, monkeypatch):
    import kubernetes.client

    monkeypatch.setattr(kubernetes.client, "AppsV1Api", _FakeApi)
    monkeypatch.setattr(kubernetes.client, "CoreV1Api", _FakeApi)
    monkeypatch.setattr(_FakeApi, "calls", [])
    monkeypatch.setattr(_FakeApi, "existing", {lora_plan.name})
    manifests = vllm_manifests(lora_plan)
    serving.apply_manifests(manifests, api_client="client")
    assert _FakeApi.calls == [("create_namespaced_deployment", lora_plan.name),
                              ("replace_namespaced_deployment", lora_plan.name),
                              ("create_namespaced_service", lora_plan.name),
                              ("replace_namespaced_service", lora_plan.name)]
    _FakeApi.calls.clear()
    _FakeApi.existing.clear()
    serving.delete_manifests(manifests, api_client="client")
    assert _FakeApi.calls == [("delete_namespaced_service", lora_plan.name),
                              ("delete_namespaced_deployment", lora_plan.name)]


def test_wait_ready_waits_for_the_current_template_to_be_ready(monkeypatch):
    """A replaced Deployment's old pod still counts as ready until the controller has seen the new generation."""
    from types import SimpleNamespace

    import kubernetes.client

    states = [(1, 1, 1), (2, 0, 0), (2, 1, 1)]  # observed generation, updated replicas, ready replicas

    class Apps:
        def __init__(self, api_client):
            pass

        def read_namespaced_deployment(self, name, namespace):
            observed, updated, ready = states.pop(0)
            return SimpleNamespace(metadata=SimpleNamespace(generation=2), spec=SimpleNamespace(replicas=1),
                                   status=SimpleNamespace(observed_generation=observed, updated_replicas=updated,
                                                          ready_replicas=ready))

    monkeypatch.setattr(kubernetes.client, "AppsV1Api", Apps)
    serving.wait_ready("server", "sera", 60, api_client="client", poll_s=0)
    assert states == []
    states[:] = [(2, 1, 0)] * 3
    with pytest.raises(TimeoutError, match="0/1 ready"):
        serving.wait_ready("server", "sera", 0, api_client="client", poll_s=0)
