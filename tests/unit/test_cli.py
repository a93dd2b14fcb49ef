"""The `sera` command: validate (schema, sources, references), run without a scheduler, trigger over REST, stats."""
import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import docker.errors
import pytest

from sera_ops.cli import main
from sera_ops.settings import load_platform, load_repo
from sera_ops.testing.dry_run import dry_run_platform
from sera_ops.testing.scripted_teacher import ScriptedTeacher
from sera_ops.validation import check_references
from tests.support import ROOT


@pytest.fixture(autouse=True)
def no_docker_engine(monkeypatch):
    """Validation asks the Docker engine about the base image; these tests decide what it answers."""
    monkeypatch.setattr("sera_ops.build.images.docker_client", lambda: None)


def platform_with_repos(tmp_path: Path, repos: dict[str, str], **kwargs) -> Path:
    """A dry-run platform file whose repos_dir holds `repos` (name -> YAML text)."""
    repos_dir = tmp_path / "repos"
    repos_dir.mkdir(exist_ok=True)
    for name, text in repos.items():
        (repos_dir / f"{name}.yaml").write_text(text)
    return dry_run_platform(ROOT / "config" / "platform.yaml", tmp_path, "http://127.0.0.1:9/v1", repos_dir=repos_dir,
                            **kwargs)


def git_repo(path: Path, *, commit: bool = True) -> Path:
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    if commit:
        (path / "mod.py").write_text("def f():\n    return 1\n")
        subprocess.run(["git", "-C", str(path), "add", "-A"], check=True)
        subprocess.run(["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"],
                       check=True)
    return path


def lines(out: str, level: str) -> list[str]:
    return [line for line in out.splitlines() if line.split(" ", 1)[0] == level]


def test_validate_reports_every_file(tmp_path, capsys):
    platform = platform_with_repos(tmp_path, {"good": "source: bundled:tinyledger\n",
                                              "bad": "source: bundled:tinyledger\ninsts_per_fn: 0\n"})
    assert main(["--platform", str(platform), "validate"]) == 1
    out = capsys.readouterr().out
    assert "ok      sera__good" in out and "bad.yaml: field 'insts_per_fn'" in out


def test_validate_checks_that_each_source_can_be_read(tmp_path, capsys):
    git_repo(tmp_path / "code")
    git_repo(tmp_path / "empty", commit=False)
    (tmp_path / "plain").mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(tmp_path / "code"), str(tmp_path / "code.git")], check=True)
    platform = platform_with_repos(tmp_path, {
        "local": "source: ../code\n", "url": f"source: file://{tmp_path}/code.git\n",
        "bundled": "source: bundled:tinyledger\n",
        "missing": "source: ../absent\n", "plain": "source: ../plain\n", "empty": "source: ../empty\n",
        "gone": f"source: file://{tmp_path}/gone.git\n", "nosample": "source: bundled:nope\n"})
    assert main(["validate", "--platform", str(platform)]) == 1
    out = capsys.readouterr().out
    assert {line.split()[1] for line in lines(out, "ok")} == {"platform", "sera__local", "sera__url", "sera__bundled"}
    errors = "\n".join(lines(out, "error"))
    for name, problem in (("missing", "does not exist"), ("plain", "is not a git repository"),
                          ("empty", "has no commit on HEAD"), ("gone", "cannot be read"),
                          ("nosample", "no bundled sample 'nope' (available: tinyledger)")):
        assert f"{name}.yaml: field 'source': " in errors and problem in errors, name
    assert len(lines(out, "error")) == 2 * 5  # one status line and one explanation per bad file

    assert main(["validate", "--platform", str(platform), "--no-source-check"]) == 0
    capsys.readouterr()
    assert main(["validate", "--platform", str(platform), str(tmp_path / "repos" / "local.yaml")]) == 0
    assert "sera__missing" not in capsys.readouterr().out


def test_image_sources_are_noted_not_failed(tmp_path):
    platform = load_platform(platform_with_repos(tmp_path, {"x": "source: bundled:tinyledger\n"}))
    spec = load_repo(tmp_path / "repos" / "x.yaml", platform).model_copy(update={"source": "swebench"})
    findings = [f for f in check_references(platform, [spec]) if f.field == "source"]
    assert [(f.level, f.problem) for f in findings] == [("note", "'swebench' is not checked by `sera validate`; a "
                                                                 "run checks it when it starts")]


def test_validate_warns_about_secrets_it_cannot_see(tmp_path, capsys, monkeypatch):
    platform = platform_with_repos(tmp_path, {"good": "source: bundled:tinyledger\n"})
    monkeypatch.delenv("SERA_SCRIPTED_API_KEY", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_SERA_MODEL_SCRIPTED", raising=False)
    assert main(["validate", "--platform", str(platform)]) == 0
    warning, = lines(capsys.readouterr().out, "warning")
    assert "field 'model_servers.scripted.api_key': SERA_SCRIPTED_API_KEY and AIRFLOW_CONN_SERA_MODEL_SCRIPTED" \
           " unset here" in warning
    monkeypatch.setenv("AIRFLOW_CONN_SERA_MODEL_SCRIPTED", '{"conn_type": "generic", "password": "k"}')
    assert main(["validate", "--platform", str(platform)]) == 0
    assert not lines(capsys.readouterr().out, "warning")


class FakeImages:
    """The docker SDK's image collection as far as validation uses it: local images, and registry lookups."""

    def __init__(self, local: set[str], pullable: set[str]):
        self.local, self.pullable = local, pullable

    def get(self, name: str) -> object:
        if name not in self.local:
            raise docker.errors.ImageNotFound(f"No such image: {name}")
        return object()

    def get_registry_data(self, name: str) -> object:
        if name not in self.pullable:
            raise docker.errors.NotFound(f"pull access denied for {name}\nmore detail")
        return object()


@pytest.mark.parametrize(("local", "pullable", "sandbox", "expected"), [
    (set(), set(), "auto", 1), ({"sera-base:bookworm"}, set(), "auto", 0), (set(), {"sera-base:bookworm"}, "auto", 0),
    (set(), set(), "local", 0)])
def test_validate_checks_base_images_when_an_engine_answers(tmp_path, capsys, monkeypatch, local, pullable, sandbox,
                                                            expected):
    client = type("Client", (), {"images": FakeImages(local, pullable)})()
    monkeypatch.setattr("sera_ops.build.images.docker_client", lambda: client)
    platform = platform_with_repos(tmp_path, {"x": "source: bundled:tinyledger\n"},
                                   overrides={"images": {"sandbox": sandbox}})
    assert main(["validate", "--platform", str(platform)]) == expected
    if expected:
        error, = [line for line in lines(capsys.readouterr().out, "error") if "field" in line]
        assert "field 'images.base_image': image 'sera-base:bookworm' is not in the Docker engine and cannot be " \
               "pulled (pull access denied for sera-base:bookworm); build it with scripts/build_base_image.sh" in error


def test_a_python_version_without_a_base_image_is_an_error(tmp_path, capsys):
    platform = platform_with_repos(tmp_path, {"x": "source: bundled:tinyledger\npython_version: '3.7'\n"})
    assert main(["validate", "--platform", str(platform)]) == 1
    assert "x.yaml: field 'python_version': '3.7' has no base image" in capsys.readouterr().out


def test_run_says_why_a_repository_cannot_run(tmp_path, capsys):
    platform = platform_with_repos(tmp_path, {"bad": "source: bundled:tinyledger\ninsts_per_fn: 0\n",
                                              "plain": f"source: {tmp_path}\n"})
    assert main(["run", "bad", "--platform", str(platform)]) == 2
    err = capsys.readouterr().err
    assert "repository 'bad' has an invalid configuration: " in err and "field 'insts_per_fn'" in err
    assert main(["--platform", str(platform), "run", "plain"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a git repository" in err and "Traceback" not in err


def test_run_then_stats(tmp_path, capsys):
    with ScriptedTeacher() as teacher:
        platform = dry_run_platform(ROOT / "config" / "platform.yaml", tmp_path, teacher.url,
                                    storage_root=tmp_path / "store", overrides={"images": {"sandbox": "local"}})
        assert main(["--platform", str(platform), "run", "tinyledger", "--run-id", "cli-1", "--max-functions",
                     "2"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("dataset: ")
    assert main(["--platform", str(platform), "stats", "tinyledger", "cli-1"]) == 0
    assert json.loads(capsys.readouterr().out)["instances"] == 2
    assert main(["--platform", str(platform), "stats", "tinyledger", "nope"]) == 2
    assert main(["--platform", str(platform), "run", "nope"]) == 2
    assert "unknown repository 'nope'" in capsys.readouterr().err
    assert main(["--platform", str(platform), "run", "tinyledger", "--model-server", "ghost"]) == 2


def test_eval_and_export_tasks_after_a_run(tmp_path, capsys):
    """The loop without a scheduler: a run holds tasks out (the sample's `eval:`), `sera eval` scores a model server
    on them and prints the table, `sera export-tasks` writes them for Harbor; before any run both say what to do."""
    with ScriptedTeacher() as teacher:
        platform = dry_run_platform(ROOT / "config" / "platform.yaml", tmp_path, teacher.url,
                                    storage_root=tmp_path / "store", overrides={"images": {"sandbox": "local"}})
        assert main(["--platform", str(platform), "export-tasks", "tinyledger", "--format", "harbor",
                     "--out", str(tmp_path / "harbor")]) == 2
        assert "no evaluation tasks yet" in capsys.readouterr().err
        assert main(["--platform", str(platform), "eval", "tinyledger", "--model-server", "scripted"]) == 2
        assert "no evaluation tasks" in capsys.readouterr().err
        assert main(["--platform", str(platform), "run", "tinyledger", "--run-id", "cli-1", "--max-functions",
                     "4"]) == 0
        capsys.readouterr()
        assert main(["--platform", str(platform), "eval", "tinyledger", "--model-server", "ghost"]) == 2
        assert "param 'model_servers'" in capsys.readouterr().err
        assert main(["--platform", str(platform), "eval", "tinyledger", "--model-server", "scripted", "--seeds", "2",
                     "--run-id", "eval-1"]) == 0
    out = capsys.readouterr().out
    assert "| scripted | `scripted-teacher` on `scripted` |" in out and "2 seeds per model" in out
    # The local sandbox made no image, and other harnesses need one: the export says so (tests/unit/evaluate
    # exports tasks that have images).
    assert main(["--platform", str(platform), "export-tasks", "tinyledger", "--format", "harbor",
                 "--out", str(tmp_path / "harbor")]) == 2
    assert "has no container image" in capsys.readouterr().err and not (tmp_path / "harbor").exists()


def test_pools_file_has_one_pool_per_model_server(tmp_path, capsys):
    platform = dry_run_platform(ROOT / "config" / "platform.yaml", tmp_path, "http://127.0.0.1:9/v1",
                                overrides={"model_servers": {"big": {"base_url": "http://127.0.0.1:8/v1", "model": "m",
                                                                     "parallel_batches": 6}}})
    assert main(["--platform", str(platform), "pools", "--out", str(tmp_path / "pools.json")]) == 0
    pools = json.loads((tmp_path / "pools.json").read_text())
    assert {name: pool["slots"] for name, pool in pools.items()} == {"sera_model_scripted": 2, "sera_model_big": 6}


RUN_ID = "manual__2026-11-28T09:20:21.817074+00:00"
DAG_PATH = "/api/v2/dags/sera__demo"
RUN_PATH = f"{DAG_PATH}/dagRuns/{RUN_ID}"


class FakeAirflow(ThreadingHTTPServer):
    """The subset of Airflow 3.3's REST API v2 and simple-auth login that `sera trigger` uses, on loopback."""

    def __init__(self, *, outcome: str = "success", paused: bool = False):
        super().__init__(("127.0.0.1", 0), FakeAirflowHandler)
        self.states = ["queued", "running", outcome]
        self.paused = paused
        self.requests: list[tuple[str, str, dict | None]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def answer(self, method: str, path: str, body: dict | None, token: str | None) -> tuple[int, dict]:
        if (method, path) == ("POST", "/auth/token"):
            ok = body == {"username": "ci", "password": "secret"}
            return (201, {"access_token": "jwt-1"}) if ok else (401, {"detail": "Invalid credentials"})
        if token != "Bearer jwt-1":
            return 401, {"detail": "Not authenticated"}
        if not path.startswith(DAG_PATH):
            return 404, {"detail": f"The Dag with ID: `{path.split('/')[4]}` was not found"}
        routes = {
            ("GET", DAG_PATH): lambda: (200, {"dag_id": "sera__demo", "is_paused": self.paused}),
            ("PATCH", DAG_PATH): lambda: (200, {"dag_id": "sera__demo", "is_paused": body["is_paused"]}),
            ("POST", f"{DAG_PATH}/dagRuns"): lambda: self.trigger(body),
            ("GET", RUN_PATH): lambda: (200, {"dag_run_id": RUN_ID, "state": self.states.pop(0)}),
            ("GET", f"{RUN_PATH}/taskInstances"): lambda: (200, {"total_entries": 3, "task_instances": [
                {"task_id": "select_commits", "map_index": -1, "state": "success"},
                {"task_id": "per_batch.rollouts", "map_index": 1, "state": "failed"},
                {"task_id": "assemble", "map_index": -1, "state": "upstream_failed"}]}),
            ("GET", f"{RUN_PATH}/taskInstances/assemble/xcomEntries/return_value"): lambda: (200, {
                "key": "return_value", "value": {"instances": 8, "judged_good": 7, "verified": 4,
                                                  "records": {"t1": 7, "t2": 4}, "dataset_dir": "/store/demo/ds"}}),
        }
        return routes.get((method, path), lambda: (404, {"detail": "Not Found"}))()

    def trigger(self, body: dict) -> tuple[int, dict]:
        if set(body) != {"logical_date", "conf"} or body["logical_date"] is not None:
            return 422, {"detail": "logical_date is required"}
        if not isinstance(body["conf"].get("max_functions", 1), int):
            return 400, {"detail": "Invalid input for param max_functions: 'x' is not of type 'integer'\n\n"
                                   "Failed validating 'type' in schema:\n    {'type': 'integer'}"}
        return 200, {"dag_run_id": RUN_ID, "state": self.states.pop(0)}


class FakeAirflowHandler(BaseHTTPRequestHandler):
    server: FakeAirflow

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        path = unquote(urlsplit(self.path).path)
        self.server.requests.append((self.command, path, body))
        status, answer = self.server.answer(self.command, path, body, self.headers.get("Authorization"))
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = _serve

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def airflow(request, monkeypatch):
    monkeypatch.delenv("SERA_AIRFLOW_TOKEN", raising=False)
    monkeypatch.setenv("SERA_AIRFLOW_USERNAME", "ci")
    monkeypatch.setenv("SERA_AIRFLOW_PASSWORD", "secret")
    server = FakeAirflow(**getattr(request, "param", {}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def trigger(airflow: FakeAirflow, *args: str) -> int:
    return main(["trigger", "demo", "--api-url", airflow.url, "--poll", "0.01", *args])


def test_trigger_waits_for_the_run_and_prints_its_dataset(airflow, capsys):
    assert trigger(airflow, "--conf", '{"max_functions": 4}', "--wait") == 0
    out = capsys.readouterr().out
    assert f"triggered sera__demo run {RUN_ID}" in out and "state          success" in out
    assert "verified       4" in out and "records        t1.jsonl 7, t2.jsonl 4" in out
    assert out.strip().splitlines()[-1] == "dataset: /store/demo/ds"
    assert ("POST", f"{DAG_PATH}/dagRuns", {"logical_date": None, "conf": {"max_functions": 4}}) in airflow.requests
    assert airflow.requests[0] == ("POST", "/auth/token", {"username": "ci", "password": "secret"})


@pytest.mark.parametrize("airflow", [{"outcome": "failed"}], indirect=True)
def test_a_failed_run_exits_1_and_names_the_failed_tasks(airflow, capsys):
    assert trigger(airflow, "--wait") == 1
    out = capsys.readouterr().out
    assert "state          failed" in out and "per_batch.rollouts[1], assemble" in out


@pytest.mark.parametrize("airflow", [{"outcome": "running", "paused": True}], indirect=True)
def test_trigger_unpauses_on_request_and_times_out(airflow, capsys):
    assert trigger(airflow) == 0
    assert "sera__demo is paused" in capsys.readouterr().err
    airflow.states = ["queued", *["running"] * 100]
    assert trigger(airflow, "--unpause", "--wait", "--timeout", "0.05") == 1
    assert "timed out: the run is still running" in capsys.readouterr().err
    assert ("PATCH", DAG_PATH, {"is_paused": False}) in airflow.requests


def test_trigger_errors_are_one_line_each(airflow, capsys, monkeypatch):
    cases = [
        (["--conf", '{"max_functions": "x"}'], "HTTP 400: Invalid input for param max_functions"),
        (["--conf", "[1]"], "--conf must be a JSON object"),
        (["--conf", "{oops"], "--conf is not valid JSON"),
    ]
    for args, message in cases:
        assert trigger(airflow, *args) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.splitlines()) == 1
    assert main(["trigger", "other", "--api-url", airflow.url]) == 2
    assert "HTTP 404: The Dag with ID: `sera__other` was not found (is the repository file deployed" in \
           capsys.readouterr().err
    monkeypatch.setenv("SERA_AIRFLOW_PASSWORD", "wrong")
    assert trigger(airflow) == 2
    assert "HTTP 401: Invalid credentials (set SERA_AIRFLOW_TOKEN, or SERA_AIRFLOW_USERNAME" in capsys.readouterr().err
    monkeypatch.setenv("SERA_AIRFLOW_TOKEN", "jwt-1")
    assert trigger(airflow) == 0
    port = airflow.server_address[1]
    airflow.shutdown()
    airflow.server_close()
    assert main(["trigger", "demo", "--api-url", f"http://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot reach Airflow at http://127.0.0.1:{port}") and len(err.splitlines()) == 1
