"""The viewer's evaluation pages over a store written by the evaluation's own writers: the harness's result records and
summaries (`EvalResult`, `harness.summarize`), the plan and the report (`report.write_report`, with its plot)."""
import html
import json
import os
import time
from pathlib import Path

import pytest

from sera_ops.evaluate.harness import summarize
from sera_ops.evaluate.report import ReportHeader, write_report
from sera_ops.records import EvalResult
from sera_ops.store import views
from sera_ops.store.io import atomic_write_json, atomic_write_jsonl
from sera_ops.store.layout import RepoStore
from sera_ops.testing.dry_run import dry_run_platform
from tests.support import ROOT
from tests.support.viewer import logged_in_client

REPO = "tinyledger"
GENERATION = "manual__2026-01-01T00_00_00_00_00"  # the dataset run the evaluated model was trained on
DONE = "manual__2026-02-01T00_00_00_00_00"  # finished: two models evaluated, one failed
RUNNING = "manual__2026-02-02T00_00_00_00_00"  # planned, one episode scored, no report
TASKS = ["tinyledger-0001", "tinyledger-0002"]
SEEDS = [0, 1]
THRESHOLD = 0.5
SCRIPT = "<script>alert('model error')</script>"
TEACHER_ERROR = f"model 'teacher' (server 'scripted' at http://127.0.0.1:9/v1): connection refused {SCRIPT}"
NOT_SERVED = "no model server serves the base model: set eval.base_server in repos/tinyledger.yaml"
# (task, seed) -> (resolved, recall, tests passed, exit status): student resolves 1 of 2 tasks with seed 0, both with
# seed 1 (50% and 100%: mean 75%, std 35.4%); base+guide resolves nothing.
OUTCOMES = {
    "student": {(TASKS[0], 0): (True, 1.0, True, "Submitted"), (TASKS[1], 0): (False, 0.25, False, "LimitsExceeded"),
                (TASKS[0], 1): (True, 0.75, True, "Submitted"), (TASKS[1], 1): (True, 0.5, False, "Submitted")},
    "base+guide": {(task, seed): (False, 0.0, False, "Submitted") for task in TASKS for seed in SEEDS},
}
SERVERS = {"student": ("student-vllm", "tinyledger-student"), "base+guide": ("base-vllm", "Qwen/Qwen3-8B")}


def _result(model: str, task: str, seed: int, outcome: tuple) -> EvalResult:
    resolved, recall, passed, exit_status = outcome
    return EvalResult(model=model, task_id=task, seed=seed, resolved=resolved, recall=recall, threshold=THRESHOLD,
                      tests_passed=passed, exit_status=exit_status, patch="diff --git a/x b/x\n", model_calls=3,
                      prompt_tokens=1000 + seed, completion_tokens=200, cost_usd=0.0125, duration_s=4.2)


def _plan(repo: RepoStore, run: str, models: list[dict]) -> None:
    """plan.json as `pipeline.evaluation.plan` writes it."""
    atomic_write_json(repo.evaluation(run).plan, {
        "repo": REPO, "run_id": run, "tasks": TASKS, "seeds": SEEDS, "threshold": THRESHOLD,
        "model_dir": str(repo.model_dir("job-1")), "models": models, "planned_at": time.time()})


def _entry(label: str, server: str | None, problem: str | None = None) -> dict:
    return {"label": label, "server": server, "guided": label == "base+guide", "problem": problem}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("viewer-evaluation")
    root = workdir / "store"
    repo = RepoStore(root, REPO)
    repo.run(GENERATION).write_json(repo.run(GENERATION).manifest, {"run_id": GENERATION})

    # finished: as the harness writes each model's results and summary, then `report` the report and latest.json
    _plan(repo, DONE, [_entry("student", "student-vllm"), _entry("base+guide", "base-vllm"),
                       _entry("teacher", "scripted")])
    files = repo.evaluation(DONE)
    summaries = []
    for model, outcomes in OUTCOMES.items():
        results = [_result(model, task, seed, outcome) for (task, seed), outcome in outcomes.items()]
        for result in results:
            atomic_write_json(files.result(model, result.task_id, result.seed), result.to_dict())
        atomic_write_jsonl(files.results(model), [result.to_dict() for result in results])
        server, model_id = SERVERS[model]
        summary = {"model": model, "server": server, "model_id": model_id, "guided": model == "base+guide",
                   **summarize(results, SEEDS)}
        atomic_write_json(files.summary(model), summary)
        summaries.append(summary)
    failure = {"model": "teacher", "server": "scripted", "error": TEACHER_ERROR}
    atomic_write_json(files.error("teacher"), failure)
    write_report(files, ReportHeader(repo=REPO, run_id=DONE, model_dir=str(repo.model_dir("job-1")),
                                     tasks=len(TASKS), seeds=len(SEEDS), threshold=THRESHOLD), summaries, [failure])
    atomic_write_json(repo.latest_evaluation, {"run_id": DONE, "report": str(files.report),
                                               "model_dir": str(repo.model_dir("job-1")), "time": time.time()})
    an_hour_ago = time.time() - 3600
    for path in (files.dir, files.plan, files.report):
        os.utime(path, (an_hour_ago, an_hour_ago))

    # in progress: one episode of the student scored (no results.jsonl yet), the base has no server
    _plan(repo, RUNNING, [_entry("student", "student-vllm"), _entry("base", None, NOT_SERVED)])
    running = repo.evaluation(RUNNING)
    atomic_write_json(running.result("student", TASKS[0], 0),
                      _result("student", TASKS[0], 0, OUTCOMES["student"][(TASKS[0], 0)]).to_dict())
    atomic_write_json(running.error("base"), {"model": "base", "server": None, "error": NOT_SERVED})

    dry_run_platform(ROOT / "config" / "platform.yaml", workdir, "http://127.0.0.1:9", storage_root=root)
    return root


@pytest.fixture
def client(store, monkeypatch):
    return logged_in_client(store.parent / "platform.yaml", monkeypatch)


def report(store: Path) -> dict:
    return json.loads(RepoStore(store, REPO).evaluation(DONE).report.read_text())


def percent(value: float) -> str:
    return f"{100 * value:.1f}%"


# ---------------------------------------------------------------- sera_ops.store.views


def test_evaluations_are_listed_newest_first_with_each_models_resolved_mean(store, tmp_path):
    running, done = views.list_evaluations(store, REPO)
    assert (running.run_id, running.finished, running.is_latest) == (RUNNING, False, False)
    assert (running.models, running.resolved, running.failed) == (["student", "base"], {}, [])
    assert (done.run_id, done.finished, done.is_latest) == (DONE, True, True) and running.modified > done.modified
    assert done.models == ["student", "base+guide", "teacher"] and done.failed == ["teacher"]
    assert done.resolved == {row["model"]: row["resolved_mean"] for row in report(store)["models"]}
    assert done.resolved == {"student": 0.75, "base+guide": 0.0}
    empty = tmp_path / "store"
    RepoStore(empty, REPO).runs_dir.mkdir(parents=True)
    assert views.list_evaluations(empty, REPO) == []  # a repository never evaluated


def test_evaluation_detail_has_the_report_and_every_models_results_per_task(store):
    detail = views.evaluation_detail(store, REPO, DONE)
    assert detail.finished and detail.is_latest and detail.has_plot
    assert detail.rows == report(store)["models"] and [f["error"] for f in detail.failed] == [TEACHER_ERROR]
    assert (detail.tasks, detail.seeds, detail.threshold) == (TASKS, SEEDS, THRESHOLD)
    student, guided, teacher = detail.models
    assert (student.model, student.evaluated, student.error, student.episodes, student.planned_episodes) == (
        "student", True, None, 4, 4)
    first, second = student.tasks
    assert (first.task_id, first.seeds, first.missing_seeds, first.resolved, first.tests_passed) == (
        TASKS[0], SEEDS, [], 2, 2)
    assert first.mean_recall == pytest.approx(0.875) and first.exit_statuses == ["Submitted", "Submitted"]
    assert (second.resolved, second.tests_passed, second.exit_statuses) == (1, 0, ["LimitsExceeded", "Submitted"])
    assert guided.guided and [t.resolved for t in guided.tasks] == [0, 0]  # its folder is base_guide
    assert (teacher.evaluated, teacher.error, teacher.episodes, [t.seeds for t in teacher.tasks]) == (
        False, TEACHER_ERROR, 0, [[], []])


def test_an_unfinished_evaluation_has_its_plan_and_the_results_so_far(store):
    detail = views.evaluation_detail(store, REPO, RUNNING)
    assert not detail.finished and detail.report is None and detail.rows == [] and not detail.has_plot
    student, base = detail.models
    assert (student.episodes, student.planned_episodes, student.evaluated) == (1, 4, False)
    assert [(t.task_id, t.seeds, t.missing_seeds) for t in student.tasks] == [(TASKS[0], [0], [1]),
                                                                               (TASKS[1], [], [0, 1])]
    assert (base.server, base.problem, base.error) == (None, NOT_SERVED, NOT_SERVED)
    with pytest.raises(LookupError):
        views.evaluation_report(store, REPO, RUNNING)
    with pytest.raises(LookupError):
        views.evaluation_plot(store, REPO, RUNNING)


@pytest.mark.parametrize("names", [
    (REPO, ".."), ("..", DONE), (REPO, "."), (REPO, ""), (REPO, "a/b"), (REPO, f"{DONE}/.."), (REPO, "no-such-run"),
    (REPO, "latest.json"), (REPO, ".hidden"), ("no-such-repo", DONE), (REPO, GENERATION)])
def test_invalid_or_unknown_evaluation_names_are_lookup_errors(store, names):
    with pytest.raises(views.NotFound):
        views.evaluation_detail(store, *names)


# ---------------------------------------------------------------- the plugin's app


def test_index_lists_the_evaluation_runs_beside_the_generation_runs(client):
    page = client.get("/")
    assert page.status_code == 200
    assert f'<a href="/{REPO}/{GENERATION}">{GENERATION}</a>' in page.text
    evaluations = page.text.split(f'<h3 id="{REPO}-evaluations">Evaluations</h3>')[1]
    assert evaluations.index(f'<a href="/{REPO}/evals/{RUNNING}">{RUNNING}</a></td>') < evaluations.index(
        f'<a href="/{REPO}/evals/{DONE}">{DONE}</a> <span class="badge">latest</span>')
    assert ('<td>finished</td><td>student 75.0% · base+guide 0.0% · teacher <span class="error">failed</span></td>'
            in evaluations)
    assert '<td>in progress</td><td>student <span class="missing">—</span> · base' in evaluations
    assert client.get(f"/{REPO}/{GENERATION}").status_code == 200  # the run routes still answer after evals/


def test_evaluation_page_shows_the_report_table_failures_and_plot(client, store):
    page = client.get(f"/{REPO}/evals/{DONE}")
    assert page.status_code == 200
    table = page.text.split("<h2>Report</h2>")[1].split("<h2>Failed models (1)</h2>")[0]
    for row in report(store)["models"]:
        resolved = f"<td>{percent(row['resolved_mean'])} ± {percent(row['resolved_std'])}</td>"
        assert f"<code>{row['model_id']}</code> on <code>{row['server']}</code></td>" in table and resolved in table
    assert "<td>75.0% ± 35.4%</td><td>s0 50.0%, s1 100.0%</td><td>0.62</td><td>50.0%</td>" in table
    assert "<td>0.0% ± 0.0%</td>" in table and "base+guide (with the repository guide)" in table
    assert "<td>1200</td><td>$0.0125</td>" in table  # (2 × 1200 + 2 × 1201) / 4 tokens
    assert SCRIPT not in page.text and f'<pre class="error">{html.escape(TEACHER_ERROR)}</pre>' in page.text
    assert f'<img src="/{REPO}/evals/{DONE}/report.png"' in page.text
    assert f'href="/api/{REPO}/evals/{DONE}/report"' in page.text
    results = page.text.split("<h2>Results per task</h2>")[1]
    assert (f"<tr><td>{TASKS[1]}</td><td>1 of 2</td><td>0.38</td><td>0 of 2</td><td>LimitsExceeded, Submitted</td>"
            "<td>s0, s1</td></tr>") in results
    assert '<h3 id="model-3">teacher</h3>\n<p>No result files (the model failed).</p>' in results
    assert "missing s" not in results  # every planned episode of the others was scored


def test_the_plot_is_served_as_png(client, store):
    response = client.get(f"/{REPO}/evals/{DONE}/report.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content.startswith(b"\x89PNG") and response.content == (
        RepoStore(store, REPO).evaluation(DONE).report_plot.read_bytes())
    assert response.headers["x-content-type-options"] == "nosniff"


def test_report_api_returns_report_json(client, store):
    response = client.get(f"/api/{REPO}/evals/{DONE}/report")
    assert response.status_code == 200 and response.json() == report(store)


def test_an_unfinished_evaluation_shows_in_progress_with_its_planned_models(client):
    page = client.get(f"/{REPO}/evals/{RUNNING}")
    assert page.status_code == 200 and "<h2>In progress</h2>" in page.text and "<h2>Report</h2>" not in page.text
    assert "<td>in progress: 1 of 4 episodes scored</td>" in page.text
    assert "<tr><td>student</td><td><code>student-vllm</code></td><td>in progress</td><td>1 of 4</td>" in page.text
    assert (f'<tr><td>base</td><td><span class="missing">—</span></td><td><span class="error">not served</span></td>'
            f'<td>0 of 4</td><td><pre class="error">{NOT_SERVED}</pre></td></tr>') in page.text
    assert f"<summary>planned tasks (2)</summary><pre>{TASKS[0]}\n{TASKS[1]}</pre>" in page.text
    assert (f"<tr><td>{TASKS[0]}</td><td>1 of 1</td><td>1.00</td><td>1 of 1</td><td>Submitted</td>"
            '<td>s0; <span class="missing">missing s1</span></td></tr>') in page.text
    assert (f'<tr><td>{TASKS[1]}</td><td><span class="missing">—</span></td>' in page.text
            and '<td><span class="missing">missing s0, s1</span></td></tr>' in page.text)
    assert "report.png" not in page.text
    assert client.get(f"/{REPO}/evals/{RUNNING}/report.png").status_code == 404
    assert client.get(f"/api/{REPO}/evals/{RUNNING}/report").status_code == 404


@pytest.mark.parametrize("path", [
    f"/{REPO}/evals/no-such-run", f"/{REPO}/evals/%2e%2e", f"/%2e%2e/evals/{DONE}", f"/no-such-repo/evals/{DONE}",
    f"/{REPO}/evals/%2e%2e%2f%2e%2e", f"/{REPO}/evals/latest.json", f"/{REPO}/evals/{GENERATION}",
    f"/{REPO}/evals/%2e%2e/report.png", f"/{REPO}/evals/no-such-run/report.png", f"/api/{REPO}/evals/%2e%2e/report",
    f"/api/{REPO}/evals/no-such-run/report", f"/api/%2e%2e/evals/{DONE}/report"])
def test_invalid_or_unknown_evaluations_are_404(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert "<script" not in response.text


def test_evaluations_must_stay_under_the_storage_root(client, store, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "report.json").write_text(json.dumps({"models": [], "failed": []}))
    (outside / "report.png").write_bytes(RepoStore(store, REPO).evaluation(DONE).report_plot.read_bytes())
    link = RepoStore(store, REPO).evals_dir / "escape"
    link.symlink_to(outside, target_is_directory=True)
    try:
        assert "escape" not in [e.run_id for e in views.list_evaluations(store, REPO)]
        for path in (f"/{REPO}/evals/escape", f"/{REPO}/evals/escape/report.png", f"/api/{REPO}/evals/escape/report"):
            assert client.get(path).status_code == 404, path
    finally:
        link.unlink()
