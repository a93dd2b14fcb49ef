"""The dataset viewer over a real run store: `sera_ops.store.views` (what the pages show) and the plugin's HTTP app."""
import html
import json
import os
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient

from sera_ops import pipeline, verify
from sera_ops.pipeline.context import BatchFailed, RunContext, RunParams
from sera_ops.settings import EvalSettings, load_platform, load_repos
from sera_ops.store import views
from sera_ops.store.layout import PLOTS
from sera_ops.testing.dry_run import dry_run_platform
from sera_ops.testing.scripted_teacher import ScriptedTeacher, ScriptedTeacherConfig
from tests.support import ROOT
from tests.support.viewer import logged_in_client

REPO = "tinyledger"
DONE_RUN = "manual__2026-01-01T00:00:00+00:00"  # assembled and published
DONE = "manual__2026-01-01T00_00_00_00_00"  # its directory name, which URLs use
FAILED = "failed-run"  # sampled, then every rollout one failed on a teacher outage
SCRIPT = "<script>alert('trajectory')</script>"


def _context(workdir: Path, store: Path, teacher_url: str, run_id: str) -> RunContext:
    platform = load_platform(dry_run_platform(ROOT / "config" / "platform.yaml", workdir, teacher_url,
                                              storage_root=store, overrides={"images": {"sandbox": "local"}}))
    spec = load_repos(platform)[0][0].model_copy(update={"eval": EvalSettings()})  # every instance trains
    return RunContext.create(platform, spec, run_id, RunParams(max_functions=2))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """One finished run (with a `<script>` injected into a trajectory) and a newer one whose rollouts all failed."""
    workdir = tmp_path_factory.mktemp("viewer")
    root = workdir / "store"
    with ScriptedTeacher(ScriptedTeacherConfig()) as teacher:
        done = _context(workdir, root, teacher.url, DONE_RUN)
        pipeline.run_all(done)
    traj = next(done.store.run_dir.glob("instances/*/rollout1.a0.traj.json"))
    data = json.loads(traj.read_text())
    data["messages"].append({"role": "user", "content": SCRIPT, "extra": {"secret_usage": 1}})
    traj.write_text(json.dumps(data))
    an_hour_ago = time.time() - 3600
    for directory in (done.store.run_dir, done.store.run_dir / "instances", done.store.dataset_dir):
        os.utime(directory, (an_hour_ago, an_hour_ago))

    with ScriptedTeacher(ScriptedTeacherConfig(error_rate=1.0)) as broken:
        failed = _context(workdir, root, broken.url, FAILED)
        failed.platform.model_servers["scripted"] = failed.server.model_copy(update={"max_retries": 0})
        for commit in pipeline.select_commits(failed):
            pipeline.build_image(failed, commit)
            pipeline.inventory(failed, commit)
        pipeline.sample(failed)
        (batch,) = pipeline.make_batches(failed)
        with pytest.raises(BatchFailed):
            pipeline.rollout_one(failed, batch)
    return root


@pytest.fixture
def client(store, monkeypatch):
    return logged_in_client(store.parent / "platform.yaml", monkeypatch)


def done_instance(store: Path, instance_id: str) -> dict[str, dict]:
    folder = store / REPO / "runs" / DONE / "instances" / instance_id
    return {name: json.loads((folder / f"{name}.json").read_text()) for name in ("rollout1", "synth", "rollout2")}


def instance_ids(store: Path, run: str) -> list[str]:
    return sorted(r["instance_id"] for r in json.loads((store / REPO / "runs" / run / "instances.json").read_text()))


def scripted_instance(store: Path) -> str:
    return next(store.glob(f"{REPO}/runs/{DONE}/instances/*/rollout1.a0.traj.json")).parent.name


# ---------------------------------------------------------------- sera_ops.store.views


def test_runs_are_listed_newest_first_with_their_state(store, tmp_path):
    assert views.list_repos(store) == [REPO]
    assert views.list_repos(tmp_path / "nowhere") == []
    newest, older = views.list_runs(store, REPO)
    assert (newest.run_id, newest.stats, newest.is_latest) == (FAILED, None, False)
    assert (older.run_id, older.is_latest) == (DONE, True) and newest.modified > older.modified
    assert older.stats == json.loads((store / REPO / "runs" / DONE / "dataset" / "stats.json").read_text())


def test_run_detail_reports_every_instance_and_stage(store):
    detail = views.run_detail(store, REPO, DONE)
    assert detail.manifest["run_id"] == DONE_RUN and detail.stats["records"] == {"t1": 2, "t2": 2}
    assert [i.instance_id for i in detail.instances] == instance_ids(store, DONE)
    for row in detail.instances:
        assert (row.rollout1_exit_status, row.rollout1_attempts, row.judged_good) == ("Submitted", 1, True)
        assert (row.synthetic_pr, row.rollout2_exit_status, row.recall, row.resolved) == (True, "Submitted", 1.0, True)
        assert row.start_fn and row.start_fn_file.endswith(".py") and len(row.commit) == 40 and row.errors == {}

    failed = views.run_detail(store, REPO, FAILED)
    assert failed.stats is None and not failed.is_latest and len(failed.instances) == 2
    for row in failed.instances:
        assert (row.rollout1_exit_status, row.judged_good, row.synthetic_pr, row.recall) == (None, None, False, None)
        assert set(row.errors) == {"rollout1"} and "injected by the scripted teacher" in row.errors["rollout1"]


def test_instance_detail_has_patches_pr_and_trajectories_without_extra(store):
    iid = scripted_instance(store)
    files = done_instance(store, iid)
    detail = views.instance_detail(store, REPO, DONE, iid)
    assert detail.patch_one == files["rollout1"]["final"]["patch"] and detail.patch_one.startswith("diff --git")
    assert detail.patch_two == files["rollout2"]["patch"]
    assert detail.task == files["rollout1"]["final"]["task"] and detail.synthetic_pr == files["synth"]["synth_pr"]
    assert detail.verdict["recall"] == 1.0 and detail.status.resolved is True
    assert [m.role for m in detail.trajectory_one[:3]] == ["system", "user", "assistant"]
    assert detail.trajectory_one[-1] == views.Message(role="user", content=SCRIPT)
    commands = [call for m in detail.trajectory_two for call in m.tool_calls]
    assert commands and all(call.startswith("bash: ") for call in commands)
    assert detail.trajectory_two[1].content.count(detail.synthetic_pr.splitlines()[0]) == 1


def test_text_mode_commands_come_from_the_parsed_actions():
    """A teacher without tool calls writes its command in a fenced block; mini-swe-agent keeps it in extra.actions."""
    reply = {"role": "assistant", "content": "THOUGHT: look\n\n```mswea_bash_command\nls -la\n```",
             "extra": {"actions": [{"command": "ls -la"}]}}
    observation = {"role": "user", "content": "<returncode>0</returncode>", "extra": {"actions": [{"command": "x"}]}}
    assert [m.tool_calls for m in views._messages({"messages": [reply, observation]})] == [["bash: ls -la"], []]


def test_missing_stage_files_read_as_none(store):
    iid = instance_ids(store, FAILED)[0]
    detail = views.instance_detail(store, REPO, FAILED, iid)
    assert (detail.task, detail.patch_one, detail.synthetic_pr, detail.patch_two, detail.verdict) == (None,) * 5
    assert detail.trajectory_two is None and detail.status.errors.keys() == {"rollout1"}


@pytest.mark.parametrize("names", [
    ("..", DONE), (REPO, ".."), (REPO, "."), (REPO, ""), (REPO, "a/b"), (REPO, f"{DONE}/.."), (REPO, "x..y"),
    (REPO, ".hidden"), (REPO, "no-such-run"), ("no-such-repo", DONE)])
def test_invalid_or_unknown_run_names_are_lookup_errors(store, names):
    with pytest.raises(LookupError):
        views.run_detail(store, *names)


def test_names_must_stay_under_the_storage_root(store, tmp_path):
    outside = tmp_path / "elsewhere"
    (outside / "instances").mkdir(parents=True)
    (outside / "runs").mkdir()
    link, repo_link = store / REPO / "runs" / "escape", store / "escaped-repo"
    link.symlink_to(outside, target_is_directory=True)
    repo_link.symlink_to(outside, target_is_directory=True)
    try:
        assert views.list_repos(store) == [REPO]
        with pytest.raises(LookupError):
            views.list_runs(store, "escaped-repo")
        with pytest.raises(LookupError):
            views.run_detail(store, REPO, "escape")
        with pytest.raises(LookupError):
            views.instance_detail(store, REPO, DONE, "../../x")
        with pytest.raises(LookupError):
            views.instance_detail(store, REPO, DONE, "no_such_instance")
    finally:
        link.unlink()
        repo_link.unlink()


# ---------------------------------------------------------------- the plugin's app


def test_index_lists_repositories_runs_and_counts(client):
    page = client.get("/")
    assert page.status_code == 200
    assert f'<h2 id="{REPO}">{REPO}</h2>' in page.text
    assert f'<a href="/{REPO}/{DONE}">{DONE}</a> <span class="badge">latest</span>' in page.text
    assert f'<a href="/{REPO}/{FAILED}">{FAILED}</a></td>' in page.text and "in progress" in page.text
    assert "<td>assembled</td><td>2</td><td>2</td><td>2</td><td>2</td><td>2</td>" in page.text


def test_run_page_lists_instances_with_recall(client, store):
    page = client.get(f"/{REPO}/{DONE}")
    assert page.status_code == 200
    for iid in instance_ids(store, DONE):
        assert f'<a href="/{REPO}/{DONE}/{iid}">{iid}</a>' in page.text
    assert page.text.count("<td>1.00</td><td>yes</td>") == 2  # recall, resolved
    summary = page.text.split("<h2>Summary</h2>")[1].split("<h2>Dataset</h2>")[0]
    for stage in ("instances", "rollout one", "judged good", "synthetic PRs", "rollout two", "verified"):
        assert f'<th>{stage}</th><td class="count">2</td>' in summary  # the funnel, in pipeline order
    assert "<td>t1.jsonl 2, t2.jsonl 2 (hermes format)</td>" in summary
    assert "dataset_dir" not in summary and str(store) not in summary and "records.t1" not in summary
    failed = client.get(f"/{REPO}/{FAILED}")
    assert failed.status_code == 200 and "Not assembled yet" in failed.text
    assert failed.text.count('<span class="error"') == 2


def test_instance_page_shows_both_patches_and_escapes_trajectory_text(client, store):
    iid = scripted_instance(store)
    files = done_instance(store, iid)
    page = client.get(f"/{REPO}/{DONE}/{iid}")
    assert page.status_code == 200
    assert html.escape(files["rollout1"]["final"]["patch"]) in page.text
    assert html.escape(files["rollout2"]["patch"]) in page.text
    assert html.escape(files["synth"]["synth_pr"]) in page.text
    assert SCRIPT not in page.text and html.escape(SCRIPT) in page.text
    assert page.text.count("<details>") >= 2 * 5 and "secret_usage" not in page.text
    # collapsed turns are told apart: the PR's first line, not its wrapper tag; a tool's exit code and output
    assert f"<b>user</b> {html.escape(files['synth']['synth_pr'].splitlines()[0])}</summary>" in page.text
    assert "<b>tool</b> [exit 0] " in page.text and "<b>user</b> &lt;pr_description&gt;" not in page.text
    # every rollout-one attempt with the judge's answer; the verdict as a sentence
    changed = len(verify.changed_lines(files["rollout1"]["final"]["patch"]))
    assert f"<tr><td>0</td><td>Submitted</td><td>{changed}</td><td>yes</td><td>yes</td><td>1</td></tr>" in page.text
    assert f"Recall <b>1.00</b> of P1's {changed} changed lines" in page.text and "<b>resolved</b>" in page.text


def test_attempts_read_every_try_and_its_judgement(store):
    """Two attempts as rollout one writes them when the judge turns the first down (an empty patch is never judged)."""
    iid = scripted_instance(store)
    detail = views.instance_detail(store, REPO, DONE, iid)
    (attempt,) = detail.attempts
    assert (attempt.number, attempt.exit_status, attempt.judged_good, attempt.judge_answer) == (0, "Submitted", True,
                                                                                              "yes")
    assert attempt.changed_lines == len(verify.changed_lines(detail.patch_one)) > 0
    assert views._attempt(1, {"rollout": {"exit_status": "Submitted", "patch": ""},
                             "judgement": {"is_good_patch": False, "answer": None, "calls": 0}}) == views.Attempt(
        number=1, exit_status="Submitted", changed_lines=0, judged_good=False, judge_answer=None, judge_calls=0)


def test_a_duplicate_patch_names_the_instance_that_owns_it(client, store):
    first, second = instance_ids(store, FAILED)
    marker = store / REPO / "runs" / FAILED / "instances" / second / "duplicate.json"
    marker.write_text(json.dumps({"duplicate_of": first, "patch": "0" * 64}))
    try:
        assert {i.instance_id: i.duplicate_of for i in views.run_detail(store, REPO, FAILED).instances} == {
            first: None, second: first}
        link = f'<a href="/{REPO}/{FAILED}/{first}">{first}</a>'
        assert f"no: duplicate of {link}" in client.get(f"/{REPO}/{FAILED}").text
        assert f"same as {link}" in client.get(f"/{REPO}/{FAILED}/{second}").text
    finally:
        marker.unlink()


def test_run_page_links_the_dataset_files_and_plots(client, store):
    page = client.get(f"/{REPO}/{DONE}")
    for name in ("README.md", "t1.parquet", "t2.parquet", "t1.jsonl", "t2.jsonl", "stats.json", *PLOTS):
        assert f'href="/{REPO}/{DONE}/dataset/{name}"' in page.text
    assert all(f'<img src="/{REPO}/{DONE}/dataset/{name}"' in page.text for name in PLOTS)
    assert "/dataset/" not in client.get(f"/{REPO}/{FAILED}").text  # not assembled: nothing to link
    assert views.dataset_files(store, REPO, FAILED) == []
    with pytest.raises(LookupError):
        views.dataset_files(store, REPO, "no-such-run")


def test_every_plot_of_the_dataset_is_shown(client, store):
    """A plot that a later version writes (a funnel, say) is shown and served without the viewer knowing its name."""
    extra = store / REPO / "runs" / DONE / "dataset" / "funnel.png"
    extra.write_bytes((store / REPO / "runs" / DONE / "dataset" / "recall.png").read_bytes())
    try:
        assert f'<img src="/{REPO}/{DONE}/dataset/funnel.png"' in client.get(f"/{REPO}/{DONE}").text
        assert client.get(f"/{REPO}/{DONE}/dataset/funnel.png").content == extra.read_bytes()
    finally:
        extra.unlink()
    assert client.get(f"/{REPO}/{DONE}/dataset/funnel.png").status_code == 404


def test_dataset_files_are_served_by_name(client, store, tmp_path):
    folder = store / REPO / "runs" / DONE / "dataset"
    card = client.get(f"/{REPO}/{DONE}/dataset/README.md")
    assert card.status_code == 200 and card.text == (folder / "README.md").read_text()
    assert card.headers["content-type"] == "text/plain; charset=utf-8"
    assert card.headers["x-content-type-options"] == "nosniff" and "| t2 records | 2 |" in card.text
    parquet = client.get(f"/{REPO}/{DONE}/dataset/t2.parquet")
    assert parquet.content == (folder / "t2.parquet").read_bytes()
    assert parquet.headers["content-disposition"] == f'attachment; filename="{REPO}-{DONE}-t2.parquet"'
    plot = client.get(f"/{REPO}/{DONE}/dataset/recall.png")
    assert plot.headers["content-type"] == "image/png" and plot.content.startswith(b"\x89PNG")
    outside = tmp_path / "outside"
    (outside / "dataset").mkdir(parents=True)
    (outside / "dataset" / "README.md").write_text("not from the store")
    link = store / REPO / "runs" / "escape"
    link.symlink_to(outside, target_is_directory=True)
    try:
        assert client.get(f"/{REPO}/escape/dataset/README.md").status_code == 404
    finally:
        link.unlink()


def test_stats_api_returns_stats_json(client, store):
    response = client.get(f"/api/{REPO}/{DONE}/stats")
    assert response.status_code == 200
    assert response.json() == json.loads((store / REPO / "runs" / DONE / "dataset" / "stats.json").read_text())


@pytest.mark.parametrize("path", [
    f"/{REPO}/%2e%2e", "/%2e%2e/runs", f"/{REPO}/{DONE}/%2e%2e", f"/{REPO}/%2e%2e%2f%2e%2e", f"/{REPO}/no-such-run",
    f"/{REPO}/{DONE}/no_such_instance", f"/api/{REPO}/%2e%2e/stats", f"/api/{REPO}/{FAILED}/stats", "/a/b/c/d",
    f"/{REPO}/{DONE}/dataset/manifest.json", f"/{REPO}/{DONE}/dataset/%2e%2e", f"/{REPO}/{FAILED}/dataset/README.md",
    f"/%2e%2e/{DONE}/dataset/README.md", f"/{REPO}/%2e%2e/dataset/stats.json"])
def test_invalid_or_unknown_names_are_404(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert "<script" not in response.text


def test_without_an_airflow_login_api_clients_are_refused_and_browsers_sent_to_log_in(store):
    import sera_viewer
    from airflow.api_fastapi.app import create_auth_manager

    create_auth_manager()  # what the API server does at start, so that a token can be checked
    anonymous = TestClient(sera_viewer.app, follow_redirects=False)
    stale = TestClient(sera_viewer.app, follow_redirects=False, cookies={"_token": "not-a-jwt"})
    assert anonymous.get("/").status_code == 401 and stale.get("/").status_code == 403
    assert anonymous.get("/", headers={"Accept": "application/json"}).json() == {"detail": "Not authenticated"}
    for client in (anonymous, stale):  # no session; a token this server cannot read (after a restart, say)
        response = client.get(f"/{REPO}/{DONE}", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
        assert response.status_code == 303, response.text
        assert response.headers["location"] == "/auth/login?" + urlencode({"next": f"http://testserver/{REPO}/{DONE}"})


def test_airflow_registers_the_app_and_the_nav_entry():
    import sera_viewer
    from airflow import plugins_manager

    apps, _ = plugins_manager.get_fastapi_plugins()  # loads plugins/ as its own module copy
    (loaded,) = [a for a in apps if a["name"] == "SERA datasets"]
    assert loaded["url_prefix"] == "/sera"
    assert {r.path for r in loaded["app"].routes} == {r.path for r in sera_viewer.app.routes}
    (info,) = [p for p in plugins_manager.get_plugin_info() if p["name"] == "sera_viewer"]
    assert info["external_views"] == sera_viewer.SeraViewerPlugin.external_views  # kept: none was rejected
