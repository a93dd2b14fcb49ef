"""Serving a trained student with vLLM in Kubernetes, for the evaluation DAG (the `kubernetes` training backend).

The evaluation talks to the student over the OpenAI protocol only, so serving it is a Deployment running
`vllm serve` and a Service in front of it, created before the evaluations and deleted after. The pod mounts the
store's claim read-only at `storage_root`, the path the training pod wrote the model to, so the model's paths (and a
LoRA adapter's recorded base) hold unchanged. A LoRA adapter is served on its base (`--enable-lora`), which the same
server then also serves bare under `base_name`, for the `base` models of the evaluation.

The rendering is pure (plain dicts, no cluster); `apply_manifests`, `delete_manifests` and `wait_ready` are the only
parts that talk to a cluster, through the `kubernetes` client imported inside them.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from sera_ops.errors import PermanentError
from sera_ops.settings import PlatformConfig, RepoSpec, is_storage_url
from sera_ops.train.run import METRICS_FILE

VLLM_IMAGE = "vllm/vllm-openai:v0.33.0"
"""The vLLM the teacher runs (deploy/k8s/teacher-vllm-glm.yaml, docker-compose.yaml's `vllm` profile)."""
ADAPTER_CONFIG = "adapter_config.json"
"""What peft writes beside a LoRA adapter: its rank and the base it was trained on."""
MODEL_CONFIG = "config.json"
"""What transformers writes beside full weights."""
TOOL_CALL_PARSERS: dict[str, str | None] = {"hermes": "hermes", "xml": None, "raw": None}
"""vLLM's tool-call parser per training format (`postprocess.format`): only hermes `<tool_call>` blocks have one; a
student trained on the others writes its commands as text, so it is evaluated with `tool_calls: false`."""
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
"""The `--max-lora-rank` values vLLM accepts; an adapter's rank is rounded up to the next one."""
HTTP = "http"
GPU = "nvidia.com/gpu"
STORE_VOLUME = "sera-store"
NAME_PREFIX = "sera-student"
MAX_NAME = 63  # a Service name is a DNS-1035 label; label values have the same limit
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

Role = Literal["student", "base"]


class ServingError(PermanentError, ValueError):
    """The model or the settings cannot be served as asked: a retry would fail the same way."""


def _shorten(value: str, limit: int = MAX_NAME) -> str:
    """`value` within `limit` characters; a cut one ends in a hash of the whole, so two long names stay apart."""
    if len(value) <= limit:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    return f"{value[:limit - len(digest) - 1].rstrip('-_.')}-{digest}"


def dns_label(value: str) -> str:
    """`value` as a DNS-1035 label (Service names): lower-case letters, digits and '-', a letter first."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")
    if not cleaned or not cleaned[0].isalpha():
        cleaned = f"x-{cleaned}".rstrip("-")
    return _shorten(cleaned)


def label_value(value: str) -> str:
    """`value` as a Kubernetes label value (repository and job names can be longer, or hold other characters)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", value).strip("-_.")
    return _shorten(cleaned)


def serving_name(repo: str, job: str) -> str:
    """The Deployment's and Service's name: one per repository and trained model, so that two evaluations of
    different models never share (or delete) each other's server."""
    return dns_label(f"{NAME_PREFIX}-{repo}-{job}")


@dataclass(frozen=True)
class ServingPlan:
    """What `vllm_manifests` renders; `to_dict`/`from_dict` carry it from the setup task to the teardown task."""

    name: str
    """The Deployment's and the Service's name (`serving_name`)."""
    repo: str
    job: str
    """The trained model's folder name under `models/` (the training job)."""
    model_path: str
    """Inside the pod: the full weights, or (`lora`) the adapter."""
    storage_claim: str
    """The store's PersistentVolumeClaim, mounted read-only at `storage_root`."""
    storage_root: str
    namespace: str = "sera"
    image: str = VLLM_IMAGE
    served_name: str = "student"
    """The model name the evaluation sends (the adapter's name in `--lora-modules`, else `--served-model-name`)."""
    lora: bool = False
    base_path: str | None = None
    """The base the adapter is loaded onto (`lora` only)."""
    base_name: str | None = None
    """The name the bare base is served under beside the adapter (`lora` only)."""
    max_lora_rank: int | None = None
    tool_call_parser: str | None = None
    gpus: int = 1
    """GPUs of the pod, and vLLM's tensor-parallel size."""
    port: int = 8000
    max_model_len: int | None = None
    """vLLM's context length; None: the model's own limit."""
    cpu: str = "8"
    memory: str = "64Gi"
    node_selector: dict[str, str] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()
    """Further `vllm serve` arguments, after the rendered ones."""

    def __post_init__(self) -> None:
        if not _DNS_LABEL.match(self.name) or len(self.name) > MAX_NAME:
            raise ServingError(f"serving name {self.name!r} is not a DNS-1035 label of at most {MAX_NAME} characters")
        if self.gpus < 1:
            raise ServingError(f"vLLM serves on GPUs: gpus must be at least 1, got {self.gpus}")
        if self.lora and not (self.base_path and self.base_name and self.max_lora_rank):
            raise ServingError(f"LoRA adapter {self.model_path}: serving it needs base_path, base_name and "
                               "max_lora_rank")

    @property
    def tool_calls(self) -> bool:
        """Whether the server parses tool calls, i.e. the evaluation's `ModelServer.tool_calls`."""
        return self.tool_call_parser is not None

    @property
    def labels(self) -> dict[str, str]:
        """The repository's label scheme (the teachers' `app.kubernetes.io/*` and `sera.dev/*`)."""
        return {"app.kubernetes.io/name": NAME_PREFIX, "app.kubernetes.io/instance": self.name,
                "app.kubernetes.io/part-of": "sera", "sera.dev/repo": label_value(self.repo),
                "sera.dev/job": label_value(self.job)}

    @property
    def selector(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": NAME_PREFIX, "app.kubernetes.io/instance": self.name}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServingPlan:
        return cls(**{**data, "extra_args": tuple(data.get("extra_args", ()))})


def vllm_args(plan: ServingPlan) -> list[str]:
    """The `vllm serve` arguments: the adapter on its base, or the full weights under the served name."""
    if plan.lora:
        args = [plan.base_path, f"--served-model-name={plan.base_name}", "--enable-lora",
                f"--lora-modules={plan.served_name}={plan.model_path}", f"--max-lora-rank={plan.max_lora_rank}"]
    else:
        args = [plan.model_path, f"--served-model-name={plan.served_name}"]
    args.append(f"--tensor-parallel-size={plan.gpus}")
    if plan.tool_call_parser:
        args += ["--enable-auto-tool-choice", f"--tool-call-parser={plan.tool_call_parser}"]
    if plan.max_model_len:
        args.append(f"--max-model-len={plan.max_model_len}")
    return [*args, "--host=0.0.0.0", f"--port={plan.port}", *plan.extra_args]


def _probe(path: str, period_s: int, failures: int) -> dict:
    return {"httpGet": {"path": path, "port": HTTP}, "periodSeconds": period_s, "failureThreshold": failures}


def vllm_manifests(plan: ServingPlan) -> list[dict]:
    """The Deployment and the Service serving `plan`, in the order they are applied (deleted in reverse)."""
    resources = {"cpu": plan.cpu, "memory": plan.memory, GPU: str(plan.gpus)}
    volumes: list[dict] = [{"name": STORE_VOLUME, "persistentVolumeClaim": {"claimName": plan.storage_claim,
                                                                            "readOnly": True}}]
    mounts: list[dict] = [{"name": STORE_VOLUME, "mountPath": plan.storage_root, "readOnly": True}]
    if plan.gpus > 1:  # NCCL between the tensor-parallel ranks; a container gets 64 MiB of /dev/shm otherwise
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    container = {
        "name": "vllm", "image": plan.image, "command": ["vllm", "serve"], "args": vllm_args(plan),
        "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "TRANSFORMERS_OFFLINE", "value": "1"}],
        "ports": [{"name": HTTP, "containerPort": plan.port}],
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "startupProbe": _probe("/health", 10, 180),  # loading the weights from the store: up to 30 minutes
        "readinessProbe": _probe("/v1/models", 10, 3),
        "livenessProbe": _probe("/health", 30, 5),
        "volumeMounts": mounts,
    }
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "tolerations": [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [container], "volumes": volumes,
    }
    if plan.node_selector:
        pod["nodeSelector"] = dict(plan.node_selector)
    metadata = {"name": plan.name, "namespace": plan.namespace, "labels": plan.labels}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata,
        "spec": {"replicas": 1, "strategy": {"type": "Recreate"},  # a rolling update would need a second set of GPUs
                 "selector": {"matchLabels": plan.selector},
                 "template": {"metadata": {"labels": plan.labels}, "spec": pod}},
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": dict(metadata),
        "spec": {"selector": plan.selector, "ports": [{"name": HTTP, "port": plan.port, "targetPort": HTTP}]},
    }
    return [deployment, service]


def model_server_for(plan: ServingPlan, role: Role = "student") -> dict[str, Any]:
    """The `ModelServer` fields the evaluation uses for the served student (or, LoRA only, its bare base)."""
    if role == "base" and not plan.lora:
        raise ServingError(f"{plan.name} serves full weights: it has no base model to evaluate")
    return {"base_url": f"http://{plan.name}.{plan.namespace}.svc:{plan.port}/v1",
            "model": plan.served_name if role == "student" else plan.base_name, "tool_calls": plan.tool_calls}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ServingError(f"cannot read {path}: {exc}") from exc


def _vllm_lora_rank(rank: int) -> int:
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ServingError(f"LoRA rank {rank} is above vLLM's largest --max-lora-rank ({VLLM_LORA_RANKS[-1]})")


def _in_store(path: Path, root: Path, what: str) -> str:
    """`path` as the pod sees it; the pod mounts nothing but the store, so anything outside it is unreachable."""
    if not path.is_absolute() or not path.is_relative_to(root):
        raise ServingError(f"{what} {path} is not under storage_root {root}, the only volume the vLLM pod mounts")
    return str(path)


def serving_plan_for(platform: PlatformConfig, spec: RepoSpec, model_dir: Path | str, *, gpus: int = 1,
                     image: str = VLLM_IMAGE, served_name: str = "student", base_name: str = "base",
                     port: int = 8000, max_model_len: int | None = None, lora_rank: int | None = None,
                     extra_args: Sequence[str] = ()) -> ServingPlan:
    """The plan serving the finished model in `model_dir` (`models/<job>` in the store) in the training pod's
    namespace, on its node selector, CPU and memory, through the store claim it wrote the model to. What is served
    follows the folder: an adapter (adapter_config.json, its rank and recorded base) or full weights; the tool-call
    parser follows the repository's training format. `lora_rank` is used when the adapter config has none; `gpus`
    is the tensor-parallel size (1 holds an 8B student; a 32B one wants 2)."""
    settings = platform.training.kubernetes
    if is_storage_url(platform.storage_root) or not settings.storage_claim:
        raise ServingError("serving a trained model in Kubernetes needs storage_root on the claim "
                           "training.kubernetes.storage_claim, as the training pod has it")
    root, folder = Path(platform.storage_root), Path(model_dir)
    if not (folder / METRICS_FILE).is_file():
        raise ServingError(f"{folder} is not a finished model: its {METRICS_FILE}, written last, is missing")
    lora, rank, base_path = (folder / ADAPTER_CONFIG).is_file(), None, None
    if lora:
        adapter = _read_json(folder / ADAPTER_CONFIG)
        ranks = [adapter["r"], *adapter.get("rank_pattern", {}).values()] if "r" in adapter else []
        if not ranks and lora_rank is None:
            raise ServingError(f"{folder / ADAPTER_CONFIG} gives no rank 'r'; pass lora_rank")
        rank = _vllm_lora_rank(max(ranks) if ranks else lora_rank)
        if not adapter.get("base_model_name_or_path"):
            raise ServingError(f"{folder / ADAPTER_CONFIG} does not record base_model_name_or_path")
        base_path = _in_store(Path(adapter["base_model_name_or_path"]), root, "the adapter's base model")
    elif not (folder / MODEL_CONFIG).is_file():
        raise ServingError(f"{folder} holds neither a LoRA adapter ({ADAPTER_CONFIG}) nor full weights "
                           f"({MODEL_CONFIG})")
    return ServingPlan(
        name=serving_name(spec.name, folder.name), repo=spec.name, job=folder.name,
        model_path=_in_store(folder, root, "the model"), storage_claim=settings.storage_claim, storage_root=str(root),
        namespace=settings.namespace, image=image, served_name=served_name, lora=lora, base_path=base_path,
        base_name=base_name if lora else None, max_lora_rank=rank,
        tool_call_parser=TOOL_CALL_PARSERS[spec.postprocess.format], gpus=gpus, port=port,
        max_model_len=max_model_len, cpu=settings.cpu, memory=settings.memory,
        node_selector=dict(settings.node_selector), extra_args=tuple(extra_args))


_APIS = {("apps/v1", "Deployment"): ("AppsV1Api", "namespaced_deployment"),
         ("v1", "Service"): ("CoreV1Api", "namespaced_service")}
"""The client API class and method suffix of each kind `vllm_manifests` renders."""


def _client(api_client: Any) -> Any:
    """The given client, else one from the pod's service account, else from the kubeconfig."""
    if api_client is not None:
        return api_client
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def _calls(manifest: dict, api_client: Any) -> tuple[Any, str, str, str]:
    """The API object, method suffix, name and namespace of one manifest."""
    from kubernetes import client

    kind = (manifest["apiVersion"], manifest["kind"])
    if kind not in _APIS:
        raise ServingError(f"no client call for {kind[0]} {kind[1]}")
    api_class, suffix = _APIS[kind]
    metadata = manifest["metadata"]
    return getattr(client, api_class)(api_client), suffix, metadata["name"], metadata["namespace"]


def apply_manifests(manifests: Sequence[dict], *, api_client: Any = None) -> None:
    """Create each object, replacing one that exists (409): a retried setup task converges on the same objects."""
    from kubernetes.client.exceptions import ApiException

    api_client = _client(api_client)
    for manifest in manifests:
        api, suffix, name, namespace = _calls(manifest, api_client)
        try:
            getattr(api, f"create_{suffix}")(namespace, manifest)
        except ApiException as exc:
            if exc.status != 409:
                raise
            getattr(api, f"replace_{suffix}")(name, namespace, manifest)


def delete_manifests(manifests: Sequence[dict], *, api_client: Any = None) -> None:
    """Delete each object in reverse order, its pods with it; one already gone (404) is fine, so teardown can run
    whatever the setup got to."""
    from kubernetes.client.exceptions import ApiException

    api_client = _client(api_client)
    for manifest in reversed(manifests):
        api, suffix, name, namespace = _calls(manifest, api_client)
        try:
            getattr(api, f"delete_{suffix}")(name, namespace, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise


def wait_ready(name: str, namespace: str, timeout_s: float, *, api_client: Any = None, poll_s: float = 10.0) -> None:
    """Return once the Deployment's current pod template is ready (not a replaced one's old pod); TimeoutError
    after `timeout_s`, which should cover the startup probe's 30 minutes of loading."""
    from kubernetes import client

    apps = client.AppsV1Api(_client(api_client))
    deadline = time.monotonic() + timeout_s
    while True:
        deployment = apps.read_namespaced_deployment(name, namespace)
        status, wanted = deployment.status, deployment.spec.replicas or 1
        if ((status.observed_generation or 0) >= deployment.metadata.generation
                and (status.updated_replicas or 0) >= wanted and (status.ready_replicas or 0) >= wanted):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"Deployment {namespace}/{name}: {status.ready_replicas or 0}/{wanted} ready after "
                               f"{timeout_s:.0f} s")
        time.sleep(poll_s)
