"""The Kubernetes deployment, checked offline (no cluster can run here): every manifest in deploy/k8s/ and every
pod-level value in deploy/helm/values.yaml is converted field by field into the `kubernetes` client's models (an
unknown or misspelt field, a wrong type or a missing required field fails), the chart values are held to the chart
keys they rely on, and the pieces are checked against each other: the platform file in the ConfigMap loads, its
model servers are the teacher Services, its store is the RWX claim every pod and the training pod mount."""

import importlib
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes.client.models as k8s_models
import pytest
import yaml
from kubernetes.client import ApiClient

from sera_ops.settings import PlatformConfig, load_platform, load_repos
from sera_ops.settings.training import TrainSettings
from sera_ops.train.jobs import launcher_command
from tests.support import ROOT

K8S_DIR = ROOT / "deploy" / "k8s"
VALUES = yaml.safe_load((ROOT / "deploy" / "helm" / "values.yaml").read_text())
MANIFESTS = [(path.name, doc) for path in sorted(K8S_DIR.glob("*.yaml"))
             for doc in yaml.safe_load_all(path.read_text()) if doc]
PLACEHOLDER = re.compile(r"\$\{[A-Z][A-Z0-9_]*\}")
OPERATOR_KINDS = {"PyTorchJob"}
"""Kinds of cluster add-ons (the Kubeflow training operator) that the kubernetes client has no model for: their pod
templates are converted instead (`pod_specs`, test_multinode_training_job_*)."""
GPU = "nvidia.com/gpu"
CHART_RESERVED_VOLUMES = {"config", "logs", "dags"}
"""Volume names the chart gives its own volumes in Airflow pods: another volume of that name clashes."""

_SCALARS = {"str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str}
_DICT = re.compile(r"^dict[\[(]str, (.+)[\])]$")

# Chart keys these values rely on (chart 1.22.0's values.yaml), with their types: a scalar type, or the Kubernetes
# model their content must convert to. A key of our values that is not here fails the test, so a misspelt or
# misplaced chart key is caught before `helm install` would silently ignore it.
CHART_KEYS: dict[str, type | str] = {
    "airflowVersion": str, "defaultAirflowTag": str, "executor": str,
    "images.airflow.repository": str, "images.airflow.tag": str, "images.airflow.pullPolicy": str,
    "imagePullSecrets": "list[V1LocalObjectReference]",
    "env": "list[V1EnvVar]", "secret": list, "volumes": "list[V1Volume]", "volumeMounts": "list[V1VolumeMount]",
    "postgresql.enabled": bool, "data.metadataSecretName": str, "fernetKeySecretName": str,
    "migrateDatabaseJob.args": "list[str]", "createUserJob.enabled": bool,
    "config": dict, "dags.persistence.enabled": bool, "dags.gitSync.enabled": bool,
    "apiServer.replicas": int, "apiServer.args": "list[str]", "apiServer.extraVolumes": "list[V1Volume]",
    "apiServer.extraVolumeMounts": "list[V1VolumeMount]", "apiServer.resources": "V1ResourceRequirements",
    "scheduler.resources": "V1ResourceRequirements", "dagProcessor.resources": "V1ResourceRequirements",
    "workers.replicas": int, "workers.nodeSelector": "dict[str, str]", "workers.tolerations": "list[V1Toleration]",
    "workers.securityContexts.pod": "V1PodSecurityContext", "workers.env": "list[V1EnvVar]",
    "workers.extraVolumes": "list[V1Volume]", "workers.extraVolumeMounts": "list[V1VolumeMount]",
    "workers.resources": "V1ResourceRequirements",
}
CHART_SECRET_KEYS = {"data.metadataSecretName": "connection", "fernetKeySecretName": "fernet-key"}
"""The key the chart reads from each Secret it is given by name."""
PROVIDER_CONFIG_SECTIONS = {"celery"}
"""airflow.cfg sections of providers the image gets for its executor but the test venv may lack."""


def convert(value: object, type_name: str, path: str, problems: list[str]) -> object:
    """`value` (parsed YAML) as the kubernetes client type `type_name` ("V1Pod", "list[V1Volume]", "str", ...),
    appending to `problems` every unknown field, wrong type or missing required field, each with its path."""
    if type_name.startswith("list["):
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {value!r}")
            return None
        return [convert(item, type_name[5:-1], f"{path}[{index}]", problems) for index, item in enumerate(value)]
    if match := _DICT.match(type_name):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {value!r}")
            return None
        return {key: convert(item, match[1], f"{path}.{key}", problems) for key, item in value.items()}
    if type_name == "object":  # IntOrString, free-form JSON
        return value
    if type_name in _SCALARS:
        if not isinstance(value, _SCALARS[type_name]) or (isinstance(value, bool) and type_name != "bool"):
            problems.append(f"{path}: expected {type_name}, got {value!r}")
        return value
    model = getattr(k8s_models, type_name)
    if not isinstance(value, dict):
        problems.append(f"{path}: expected a {type_name} mapping, got {value!r}")
        return None
    fields = {json_key: attribute for attribute, json_key in model.attribute_map.items()}
    kwargs = {}
    for key, item in value.items():
        if key not in fields:
            problems.append(f"{path}: unknown field '{key}' for {type_name}")
            continue
        kwargs[fields[key]] = convert(item, model.openapi_types[fields[key]], f"{path}.{key}", problems)
    try:
        return model(**kwargs)
    except ValueError as exc:  # a required field is missing
        problems.append(f"{path}: {exc}")
        return None


def model_name(doc: dict) -> str:
    return doc["apiVersion"].rsplit("/", 1)[-1].capitalize() + doc["kind"]


def valid(value: object, type_name: str, path: str) -> list[str]:
    problems: list[str] = []
    convert(value, type_name, path, problems)
    return problems


def of_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in MANIFESTS if doc["kind"] == kind}


def pod_specs() -> dict[str, dict]:
    specs = {f"{doc['kind']}/{doc['metadata']['name']}": doc["spec"]["template"]["spec"] for _, doc in MANIFESTS
             if doc["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job")}
    for name, job in of_kind("PyTorchJob").items():
        specs |= {f"PyTorchJob/{name}/{replica}": spec["template"]["spec"]
                  for replica, spec in job["spec"]["pytorchReplicaSpecs"].items()}
    return specs


def containers(pod: dict) -> list[dict]:
    return pod.get("initContainers", []) + pod["containers"]


def port_names(container: dict) -> set[str | int]:
    """What a probe or a Service's targetPort may name: a container port's name or number."""
    return {port["name"] for port in container["ports"]} | {port["containerPort"] for port in container["ports"]}


def flags(container: dict) -> dict[str, str]:
    """A server's `--name=value` arguments."""
    return dict(arg.split("=", 1) for arg in container.get("args", []) if arg.startswith("--") and "=" in arg)


def value_at(path: str) -> object:
    node = VALUES
    for part in path.split("."):
        node = node[part]
    return node


def all_mounts() -> list[dict]:
    return VALUES["volumeMounts"] + VALUES["apiServer"]["extraVolumeMounts"] + VALUES["workers"]["extraVolumeMounts"]


def all_volumes() -> list[dict]:
    return VALUES["volumes"] + VALUES["apiServer"]["extraVolumes"] + VALUES["workers"]["extraVolumes"]


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> PlatformConfig:
    """The platform file as the Airflow pods see it: each ConfigMap volume of the values written out at its mount
    path (under a temporary root), then loaded from SERA_PLATFORM_CONFIG."""
    root = tmp_path_factory.mktemp("pod")
    config_maps = of_kind("ConfigMap")
    volumes = {volume["name"]: volume for volume in VALUES["volumes"]}
    for mount in VALUES["volumeMounts"]:
        if "configMap" in volumes[mount["name"]]:
            folder = root / mount["mountPath"].lstrip("/")
            folder.mkdir(parents=True)
            for key, text in config_maps[volumes[mount["name"]]["configMap"]["name"]]["data"].items():
                (folder / key).write_text(text)
    env = {item["name"]: item["value"] for item in VALUES["env"]}
    return load_platform(root / env["SERA_PLATFORM_CONFIG"].lstrip("/"))


@pytest.mark.parametrize("name,doc", MANIFESTS, ids=[f"{name}:{doc['kind']}/{doc['metadata']['name']}"
                                                      for name, doc in MANIFESTS])
def test_manifest_converts_to_kubernetes_models(name, doc):
    if doc["kind"] in OPERATOR_KINDS:
        assert valid(doc["metadata"], "V1ObjectMeta", f"{name}:metadata") == []
        return
    assert hasattr(k8s_models, model_name(doc)), f"{name}: no model for {doc['apiVersion']} {doc['kind']}"
    assert valid(doc, model_name(doc), f"{name}:{doc['kind']}") == []


def test_the_validator_catches_wrong_fields_types_and_missing_fields():
    assert valid({"name": "a", "image": "b:1", "volumeMount": []}, "V1Container", "c") == [
        "c: unknown field 'volumeMount' for V1Container"]
    assert valid({"name": "a", "value": 8}, "V1EnvVar", "e") == ["e.value: expected str, got 8"]
    assert valid({"mountPath": "/x"}, "V1VolumeMount", "m")[0].startswith("m: Invalid value for `name`")


def test_images_are_pinned():
    images = [container["image"] for pod in pod_specs().values() for container in containers(pod)]
    images.append(f"{VALUES['images']['airflow']['repository']}:{VALUES['images']['airflow']['tag']}")
    for image in images:
        tag = image.rpartition("/")[2].partition(":")[2]
        assert tag and tag != "latest", f"{image}: pin a tag"


def test_secrets_hold_placeholders_only():
    secrets = of_kind("Secret")
    assert secrets
    for name, secret in secrets.items():
        assert "data" not in secret, f"Secret {name}: base64 data cannot be checked for secrets; use stringData"
        for key, value in secret["stringData"].items():
            assert PLACEHOLDER.search(value), f"Secret {name}.{key} holds a value: use a ${{VARIABLE}} placeholder"
    assert secrets["sera-registry"]["type"] == "kubernetes.io/dockerconfigjson"


def test_only_the_docker_engine_is_privileged():
    """The one privileged container holds no token and no secret (the Helm values cannot add containers: CHART_KEYS
    has no extraContainers)."""
    privileged = {name for name, pod in pod_specs().items() for container in containers(pod)
                  if container.get("securityContext", {}).get("privileged")}
    assert privileged == {"DaemonSet/sera-docker-engine"}
    assert pod_specs()["DaemonSet/sera-docker-engine"]["automountServiceAccountToken"] is False


def test_teacher_deployments_serve_on_their_gpus_with_probes_and_a_model_cache():
    teachers = {name: doc for name, doc in of_kind("Deployment").items()
                if "sera.dev/teacher" in doc["metadata"]["labels"]}
    assert {flags(doc["spec"]["template"]["spec"]["containers"][0]).get("--port") for doc in teachers.values()} \
        == {"8000", "30000"}  # the vLLM and the SGLang recipe
    for name, doc in teachers.items():
        pod = doc["spec"]["template"]["spec"]
        (server,) = pod["containers"]
        args = flags(server)
        gpus = server["resources"]["limits"][GPU]
        assert gpus == args.get("--tensor-parallel-size", args.get("--tp")), f"{name}: GPUs != tensor parallel"
        assert server["resources"]["requests"][GPU] == gpus
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert server[probe]["httpGet"]["path"] in ("/health", "/v1/models"), f"{name}: {probe}"
            assert server[probe]["httpGet"]["port"] in port_names(server), f"{name}: {probe} on no container port"
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        hf_home = next(item["value"] for item in server["env"] if item["name"] == "HF_HOME")
        cache = [mount for mount in server["volumeMounts"] if hf_home.startswith(mount["mountPath"])]
        assert cache and {"persistentVolumeClaim", "emptyDir"} & volumes[cache[0]["name"]].keys(), \
            f"{name}: HF_HOME is not on a model cache volume"


def test_model_servers_are_the_teacher_services(platform):
    services, deployments, secrets = of_kind("Service"), of_kind("Deployment"), of_kind("Secret")
    connections = secrets["sera-connections"]["stringData"]
    for server_name, server in platform.model_servers.items():
        url = urlsplit(str(server.base_url))
        service = services[url.hostname]
        (port,) = [port for port in service["spec"]["ports"] if port["port"] == url.port]
        selector = service["spec"]["selector"].items()
        (deployment,) = [doc for doc in deployments.values()
                         if selector <= doc["spec"]["template"]["metadata"]["labels"].items()]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert port["targetPort"] in port_names(container)
        args = flags(container)
        capacity = int(args.get("--max-num-seqs", args.get("--max-running-requests", 0)))
        assert capacity >= server.concurrency * server.parallel_batches, f"{server_name}: server capacity"
        assert args.get("--served-model-name", args.get("--model-path")) == server.model
        # the server's key and the connection the workers send come from the same placeholder
        key_ref = next(item["valueFrom"]["secretKeyRef"] for item in container["env"] if "valueFrom" in item)
        key_placeholder = secrets[key_ref["name"]]["stringData"][key_ref["key"]]
        assert key_placeholder in connections[server.api_key.connection], server_name


def test_every_connection_of_the_platform_reaches_the_workers(platform):
    wanted = {server.api_key.connection for server in platform.model_servers.values()}
    wanted.add(platform.registry.credentials.connection)
    given = {item["envName"]: item for item in VALUES["secret"]}
    secrets = of_kind("Secret")
    for connection in wanted:
        item = given[f"AIRFLOW_CONN_{connection.upper()}"]
        assert item["secretKey"] in secrets[item["secretName"]]["stringData"], connection
    assert all(set(item) == {"envName", "secretName", "secretKey"} for item in VALUES["secret"])


def test_the_repository_files_load_in_the_pods(platform):
    specs, errors = load_repos(platform)
    assert errors == [] and [spec.name for spec in specs] == ["itsdangerous"]
    assert platform.images.sandbox == "docker"


def test_store_is_one_rwx_claim_shared_by_airflow_and_training(platform):
    """Workers, API server (the viewer) and the training pod see the same run store at storage_root. The training
    pod is rendered from plugins/sera_airflow.training_pod (its own spec is tested in tests/test_dags.py)."""
    from sera_airflow import training_pod

    (claim,) = [name for name, doc in of_kind("PersistentVolumeClaim").items() if doc["spec"]["accessModes"]
                == ["ReadWriteMany"]]
    store = [volume["name"] for volume in VALUES["volumes"] if volume.get("persistentVolumeClaim", {}).get(
        "claimName") == claim]
    assert [mount["mountPath"] for mount in VALUES["volumeMounts"] if mount["name"] in store] \
        == [str(platform.storage_root)]
    specs, _ = load_repos(platform)
    spec = specs[0].model_copy(update={"training": TrainSettings()})  # the example repository leaves it commented
    task = training_pod(platform, spec, arguments=["--job", f"{platform.storage_root}/job.json"])
    pod = ApiClient().sanitize_for_serialization(task.build_pod_request_obj(dry_run=True))
    assert valid(pod, "V1Pod", "training pod") == []
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    assert [volume["persistentVolumeClaim"]["claimName"] for volume in volumes.values()
            if "persistentVolumeClaim" in volume] == [claim]
    (container,) = pod["spec"]["containers"]
    mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in container["volumeMounts"]}
    assert mounts[str(platform.storage_root)]["persistentVolumeClaim"]["claimName"] == claim
    assert mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory"  # several GPUs: NCCL needs more than 64 MiB
    gpus = platform.training.kubernetes.gpus
    assert container["resources"]["limits"][GPU] == str(gpus)
    assert f"--num_processes={gpus}" in container["command"]  # one training process per GPU
    assert pod["metadata"]["namespace"] == of_kind("Namespace").popitem()[0]


def test_helm_values_use_chart_keys_with_their_types():
    problems: list[str] = []

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            expected = CHART_KEYS.get(path)
            if expected is None and isinstance(value, dict):
                walk(value, f"{path}.")
            elif expected is None:
                problems.append(f"{path}: not a chart key these values are known to rely on (CHART_KEYS)")
            elif isinstance(expected, str):
                problems.extend(valid(value, expected, path))
            elif not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
                problems.append(f"{path}: expected {expected.__name__}, got {value!r}")

    walk(VALUES, "")
    assert problems == []
    assert VALUES["executor"] in ("CeleryExecutor", "KubernetesExecutor")
    assert VALUES["airflowVersion"].startswith("3.")
    # the chart writes `env` as name/value pairs only (secrets go through `secret`)
    assert all(set(item) == {"name", "value"} for item in VALUES["env"] + VALUES["workers"]["env"])
    names = [volume["name"] for volume in all_volumes()]
    assert len(names) == len(set(names)) and not CHART_RESERVED_VOLUMES & set(names)
    assert {mount["name"] for mount in all_mounts()} <= set(names)


def test_helm_values_airflow_config_exists_in_airflow():
    from airflow.configuration import conf

    for section, options in VALUES["config"].items():
        if section in PROVIDER_CONFIG_SECTIONS and section not in conf.configuration_description:
            continue
        known = conf.configuration_description[section]["options"]
        assert set(options) <= set(known), f"config.{section}: {set(options) - set(known)} unknown to Airflow"
    module, _, name = VALUES["config"]["core"]["auth_manager"].rpartition(".")
    assert hasattr(importlib.import_module(module), name)


def test_helm_values_name_objects_that_exist():
    secrets, config_maps, claims = of_kind("Secret"), of_kind("ConfigMap"), of_kind("PersistentVolumeClaim")
    for volume in all_volumes():
        if "secret" in volume:
            assert volume["secret"]["secretName"] in secrets
        if "configMap" in volume:
            assert volume["configMap"]["name"] in config_maps
        if "persistentVolumeClaim" in volume:
            assert volume["persistentVolumeClaim"]["claimName"] in claims
    for path, key in CHART_SECRET_KEYS.items():
        assert key in secrets[value_at(path)]["stringData"], path
    for pull_secret in VALUES["imagePullSecrets"]:
        assert secrets[pull_secret["name"]]["type"] == "kubernetes.io/dockerconfigjson"
    # the simple auth manager's passwords file: written by apiServer.args from the Secret, one entry per user
    core = VALUES["config"]["core"]
    assert core["simple_auth_manager_passwords_file"] in VALUES["apiServer"]["args"][-1]
    users = {entry.split(":")[0] for entry in core["simple_auth_manager_users"].split(",")}
    passwords = secrets["sera-airflow-auth"]["stringData"]["passwords.json"]
    assert set(yaml.safe_load(PLACEHOLDER.sub("x", passwords))) == users


def test_workers_reach_the_node_docker_engine():
    engine = pod_specs()["DaemonSet/sera-docker-engine"]
    (dockerd,) = engine["containers"]
    socket = Path(urlsplit(flags(dockerd)["--host"]).path)
    engine_paths = {volume["name"]: volume["hostPath"]["path"] for volume in engine["volumes"]}
    engine_mounts = {mount["mountPath"]: engine_paths[mount["name"]] for mount in dockerd["volumeMounts"]}
    workers = VALUES["workers"]
    worker_paths = {volume["name"]: volume["hostPath"]["path"] for volume in workers["extraVolumes"]}
    worker_mounts = {mount["mountPath"]: worker_paths[mount["name"]] for mount in workers["extraVolumeMounts"]}
    env = {item["name"]: item["value"] for item in workers["env"]}
    assert Path(urlsplit(env["DOCKER_HOST"]).path) == socket
    assert worker_mounts[str(socket.parent)] == engine_mounts[str(socket.parent)], "not the same host directory"
    assert int(flags(dockerd)["--group"]) in workers["securityContexts"]["pod"]["supplementalGroups"]
    assert workers["nodeSelector"] == engine["nodeSelector"] and workers["tolerations"] == engine["tolerations"]
    assert all(not flag.startswith("--host=tcp") for flag in dockerd["args"])


def test_pools_are_imported_on_every_install_and_upgrade(platform):
    script = VALUES["migrateDatabaseJob"]["args"][-1]
    assert "airflow db migrate" in script and "sera pools --out" in script and "airflow pools import" in script
    assert platform.pools()


def test_one_registry_for_airflow_training_and_commit_images(platform):
    """Replacing registry.example.com in one place only would leave pods unable to pull."""
    auths = yaml.safe_load(PLACEHOLDER.sub("x", of_kind("Secret")["sera-registry"]["stringData"][".dockerconfigjson"]))
    hosts = {VALUES["images"]["airflow"]["repository"].split("/")[0],
             platform.training.kubernetes.image.split("/")[0], platform.registry.url}
    assert hosts == set(auths["auths"])


def test_multinode_training_job_runs_the_launcher_on_every_gpu_of_every_node(platform, tmp_path):
    """The PyTorchJob (no client model): its fields by hand, its pods as V1PodTemplateSpec, and its launcher script
    run by bash with the operator's variables against a stand-in `accelerate` that prints its arguments."""
    (job,) = of_kind("PyTorchJob").values()
    assert job["apiVersion"] == "kubeflow.org/v1"
    assert set(job["spec"]) == {"nprocPerNode", "runPolicy", "pytorchReplicaSpecs"}
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"} and replicas["Master"]["replicas"] == 1
    (claim,) = [name for name, doc in of_kind("PersistentVolumeClaim").items()
                if doc["spec"]["accessModes"] == ["ReadWriteMany"]]
    gpus = job["spec"]["nprocPerNode"]
    for replica, spec in replicas.items():
        assert set(spec) == {"replicas", "restartPolicy", "template"} and spec["restartPolicy"] == "OnFailure"
        assert valid(spec["template"], "V1PodTemplateSpec", f"PyTorchJob {replica}") == []
        pod = spec["template"]["spec"]
        (container,) = pod["containers"]
        assert container["name"] == "pytorch" and container["image"] == platform.training.kubernetes.image
        assert container["resources"]["limits"][GPU] == container["resources"]["requests"][GPU] == gpus
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in container["volumeMounts"]}
        assert mounts[str(platform.storage_root)]["persistentVolumeClaim"]["claimName"] == claim
        assert mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory"
        assert {"name": "pytorchjob-port", "containerPort": 23456} in container["ports"]

    (container,) = replicas["Worker"]["template"]["spec"]["containers"]
    assert container["command"] == ["bash", "-c"]
    (tmp_path / "accelerate").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    (tmp_path / "accelerate").chmod(0o755)
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["HF_HUB_OFFLINE"] == "1" and set(env) >= {"SERA_DATA", "SERA_OUT", "SERA_SETTINGS"}
    operator = {"PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_NPROC_PER_NODE": gpus, "MASTER_ADDR": "master-0",
                "MASTER_PORT": "23456"}
    done = subprocess.run(["bash", "-c", container["args"][0]], capture_output=True, text=True, check=True,
                          env={"PATH": f"{tmp_path}:/usr/bin:/bin", **operator, "SERA_DATA": "/srv/sera/r/d",
                               "SERA_OUT": "/srv/sera/r/m", "SERA_SETTINGS": "/srv/sera/r/s.json"})
    argv = done.stdout.splitlines()
    options = argv[1:argv.index("-m")]  # every launcher option is a flag and its value
    flags = dict(zip(options[::2], options[1::2], strict=True))
    assert argv[0] == "launch" and (ROOT / flags["--config_file"]).is_file()
    assert flags["--config_file"] == launcher_command(1, "fsdp")[3]  # the config the single pod's FSDP uses
    assert (flags["--num_machines"], flags["--machine_rank"]) == ("2", "1")
    assert flags["--num_processes"] == str(2 * int(gpus))
    assert (flags["--main_process_ip"], flags["--main_process_port"]) == ("master-0", "23456")
    assert argv[argv.index("-m") + 1:] == ["sera_ops.train", "--data", "/srv/sera/r/d", "--out", "/srv/sera/r/m",
                                            "--settings", "/srv/sera/r/s.json"]
