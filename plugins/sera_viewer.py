"""The SERA dataset viewer: a read-only look into the run store from the Airflow UI (Browse → SERA datasets).

Server-side HTML from the run store, rendered with the Jinja2 templates in `sera_viewer_templates/` (a layout, one
template per page, macros for the repeated pieces): the runs of every repository with their counts, a run's
statistics, its dataset's files (card, Parquet, JSONL) and plots, per-instance progress, and one instance's task,
patches, synthetic PR, verdict and both trajectories; beside them each evaluation run (`sera_eval__<repo>`): its
report's table, failed models, plot and per-task results, or while it runs its plan and the results so far. Dataset
files are served only by name from a fixed list.
Trajectories hold whatever the model and the repository printed, so the templates escape every value (autoescape;
nothing from the store is ever marked safe), and names from the URL go through the run store's checks (anything else
is a 404). The storage root is read from the platform config on every request, so `SERA_PLATFORM_CONFIG` and config
edits apply without a restart.

Airflow does not authenticate plugin apps; this one asks for the same login as Airflow's own API (a bearer token, or
the UI's session cookie, which the embedded page sends along). A browser without a session is sent to Airflow's login
page, which brings it back; API clients get Airflow's 401.
"""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import sera_airflow
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from sera_ops.settings import load_platform
from sera_ops.store import views
from sera_ops.store.io import StorePath, is_local
from sera_ops.store.layout import CARD, PLOTS, REPORT, REPORT_PLOT, SPLITS, STATS, RepoStore

_bearer = HTTPBearer(auto_error=False)


async def airflow_login(request: Request,
                        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """401/403 unless the caller is logged in to Airflow. Airflow's auth stack is imported here, not at module import:
    every Airflow component loads plugins, only the API server serves them."""
    from airflow.api_fastapi.core_api.security import get_user

    try:
        await get_user(request, None, credentials)
    except HTTPException as exc:  # 401: no or an expired token; 403: a token this server cannot read (new secret)
        if "text/html" in request.headers.get("accept", ""):
            raise LoginFirst from exc
        raise


class LoginFirst(Exception):
    """A browser's request without a valid Airflow session."""


app = FastAPI(title="SERA datasets", docs_url=None, redoc_url=None, openapi_url=None,
              dependencies=[Depends(airflow_login)])


def storage_root() -> StorePath:
    return sera_airflow.storage_root(load_platform())


@app.exception_handler(LoginFirst)
async def login_first(request: Request, exc: LoginFirst) -> RedirectResponse:
    """To the auth manager's login page, which returns to `next` once the session cookie is set."""
    from airflow.api_fastapi.app import create_auth_manager  # the API server's own instance (a cached singleton)

    return RedirectResponse(create_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)


@app.exception_handler(views.NotFound)
async def not_found(request: Request, exc: views.NotFound) -> HTMLResponse:
    return _page(request, "not_found.html.j2", "Not found", [], message=str(exc), status_code=404)


DATASET_FILES = {CARD: "dataset card", **{f"{split}.{kind}": f"{split}.{kind}" for kind in ("parquet", "jsonl")
                                          for split in SPLITS}, STATS: STATS}
MEDIA_TYPES = {".md": ("text/plain; charset=utf-8", True), ".jsonl": ("text/plain; charset=utf-8", True),
               ".json": ("application/json", True), ".png": ("image/png", True),
               ".parquet": ("application/vnd.apache.parquet", False)}
INDEX_COUNTS = {"instances": ("instances",), "judged good": ("judged_good",), "verified": ("verified",),
                "t1 records": ("records", "t1"), "t2 records": ("records", "t2")}


@app.get("/", response_class=HTMLResponse)
def index(request: Request) -> HTMLResponse:
    root = storage_root()
    repos = [(repo, views.list_runs(root, repo), views.list_evaluations(root, repo)) for repo in views.list_repos(root)]
    return _page(request, "index.html.j2", "SERA datasets", [], root=root, repos=repos, counts=INDEX_COUNTS)


@app.get("/api/{repo}/{run}/stats")
def stats_json(repo: str, run: str) -> JSONResponse:
    detail = views.run_detail(storage_root(), repo, run)
    if detail.stats is None:
        raise views.NotFound(f"run {run} has no statistics yet (not assembled)")
    return JSONResponse(detail.stats)


@app.get("/api/{repo}/evals/{run}/report")
def evaluation_json(repo: str, run: str) -> JSONResponse:
    """report.json of an evaluation run (404 until it is written)."""
    return JSONResponse(views.evaluation_report(storage_root(), repo, run))


# The evaluation routes come before `/{repo}/{run}/…`, whose run segment would take "evals": a generation run
# literally named `evals` keeps its run page, but its instance pages are shadowed (run ids are `manual__…`, `cli__…`).
@app.get("/{repo}/evals/{run}", response_class=HTMLResponse)
def evaluation_page(request: Request, repo: str, run: str) -> HTMLResponse:
    detail = views.evaluation_detail(storage_root(), repo, run)
    return _page(request, "evaluation.html.j2", f"{repo} / evaluation {run}",
                 [(repo, _url(request) + f"#{quote(repo)}-evaluations")],
                 title_badge="latest" if detail.is_latest else None, repo=repo, run=run, detail=detail,
                 facts=_evaluation_facts(detail), report_name=REPORT, plot_name=REPORT_PLOT)


@app.get(f"/{{repo}}/evals/{{run}}/{REPORT_PLOT}")
def evaluation_plot(repo: str, run: str) -> Response:
    """The report's plot: resolved mean ± std over seeds per model."""
    return _file(views.evaluation_plot(storage_root(), repo, run), "image/png")


@app.get("/{repo}/{run}", response_class=HTMLResponse)
def run_page(request: Request, repo: str, run: str) -> HTMLResponse:
    root = storage_root()
    detail = views.run_detail(root, repo, run)
    funnel, facts = _summary(detail.stats) if detail.stats else ([], [])
    names = views.dataset_files(root, repo, run) if detail.stats else []  # older runs have no card, Parquet or plots
    return _page(request, "run.html.j2", f"{repo} / {run}", [(repo, _url(request) + f"#{quote(repo)}")],
                 title_badge="latest" if detail.is_latest else None, repo=repo, run=run, detail=detail,
                 funnel=funnel, facts=facts, stats_name=STATS, plots=_plots(names),
                 files=[(name, label) for name, label in DATASET_FILES.items() if name in names],
                 manifest=json.dumps(detail.manifest, indent=2))


@app.get("/{repo}/{run}/dataset/{name}")
def dataset_file(repo: str, run: str, name: str) -> Response:
    """One of the run's dataset files (DATASET_FILES or a plot): text and images inline, Parquet as a download."""
    root = storage_root()
    if not (name in DATASET_FILES or name.endswith(".png")) or name not in views.dataset_files(root, repo, run):
        raise views.NotFound(f"no dataset file {name!r} in run {run}")
    path = RepoStore(root, repo).run(run).dataset.dir / name
    media_type, inline = MEDIA_TYPES[Path(name).suffix]
    return _file(path, media_type, filename=None if inline else f"{repo}-{run}-{name}")


def _file(path: StorePath, media_type: str, filename: str | None = None) -> Response:
    """A file of the store, inline unless `filename` (then a download under that name); never content-sniffed."""
    headers = {"X-Content-Type-Options": "nosniff"}
    if is_local(path):
        return FileResponse(path, media_type=media_type, filename=filename, headers=headers)
    if filename:
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return Response(path.read_bytes(), media_type=media_type, headers=headers)


@app.get("/{repo}/{run}/{instance_id}", response_class=HTMLResponse)
def instance_page(request: Request, repo: str, run: str, instance_id: str) -> HTMLResponse:
    detail = views.instance_detail(storage_root(), repo, run, instance_id)
    crumbs = [(repo, _url(request) + f"#{quote(repo)}"), (run, _url(request, repo, run))]
    return _page(request, "instance.html.j2", instance_id, crumbs, repo=repo, run=run, detail=detail)


class SeraViewerPlugin(AirflowPlugin):
    name = "sera_viewer"
    fastapi_apps = [{"app": app, "url_prefix": "/sera", "name": "SERA datasets"}]
    # Shown in the UI's Browse menu, embedded in an iframe; relative so it follows the UI's base URL.
    external_views = [{"name": "SERA datasets", "href": "sera/", "url_route": "sera-datasets",
                       "destination": "nav", "category": "browse"}]


# ---------------------------------------------------------------- HTML: the templates in sera_viewer_templates/

_RETURNCODE = re.compile(r"<returncode>(-?\d+)</returncode>")
_TAG = re.compile(r"</?[A-Za-z_][\w-]*>")


def _escape(value: Any) -> Markup:
    """What every `{{ value }}` of the templates prints (the environment's finalize): the value escaped as
    `html.escape` does (`'` as `&#x27;`, as the pages always had it), nothing for None. Only HTML the templates made
    themselves (a macro's or a call block's output, Markup under autoescape) passes unchanged."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape("" if value is None else str(value), quote=True))


def _url(request: Request, *names: str) -> str:
    """An absolute path inside this app, wherever Airflow mounted it (root_path carries the prefix)."""
    return request.scope.get("root_path", "").rstrip("/") + "/" + "/".join(quote(name, safe="") for name in names)


def _plain(value: Any) -> str:
    """A value as people read it: yes/no, two decimals, a list joined, `—` for nothing (the `plain` filter)."""
    if value is None or value == []:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def _summary(stats: dict) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """The run's statistics as a reading: how many instances reached each stage (the funnel: a bar's width against
    those sampled, the share of the stage before), what was lost where, and the facts of the run."""
    def n(*keys: str) -> str:
        return _plain(_stat(stats, *keys))

    stages = [
        ("instances", "instances", f"sampled from {n('functions')} functions in {n('commits', 'ready')} of "
                                   f"{n('commits', 'selected')} commits"),
        ("rollout one", "rollout_one", f"{n('rollout_one_attempts')} attempts, {n('rollout_one_submitted')} "
                                       f"submitted, {n('rollout1_errors')} failed"),
        ("judged good", "judged_good", "the judge accepted the final attempt's patch"),
        ("synthetic PRs", "synthetic_prs", f"{n('duplicate_patches')} duplicate patches collapsed before writing, "
                                           f"{n('synth_errors')} failed"),
        ("rollout two", "rollout_two", f"{n('rollout_two_submitted')} submitted, {n('rollout2_errors')} failed"),
        ("verified", "verified", f"recall of P1's changed lines ≥ {n('threshold')}; mean recall {n('mean_recall')}"),
    ]
    total, previous, funnel = _stat(stats, "instances") or 0, None, []
    for label, key, note in stages:
        count = _stat(stats, key)
        share = f"{count / previous:.0%}" if isinstance(count, int) and previous else ""
        width = 100 * count / total if isinstance(count, int) and total else 0
        funnel.append({"label": label, "count": count, "share": share, "width": f"{width:.0f}", "note": note})
        previous = count if isinstance(count, int) else None
    failures = _stat(stats, "failed", "by_error") or {}
    calls, prompt, completion = (n("usage", "total", key) for key in ("calls", "prompt_tokens", "completion_tokens"))
    facts = [("records", f"t1.jsonl {n('records', 't1')}, t2.jsonl {n('records', 't2')} ({n('format')} format)"),
             ("teacher", f"model server {n('model_server')}: {calls} calls, {prompt} prompt and {completion} "
                         f"completion tokens, ${n('cost_usd')}"),
             ("cost limit", f"{n('cost_limited')} instances stopped by it, {n('not_started')} not started"),
             ("failed instances", n("failed", "instances") + "".join(f"; {error}: {count}"
                                                                    for error, count in failures.items())),
             ("failed commits", n("commits", "failed")), ("Airflow run", n("run_id"))]
    return funnel, facts


def _evaluation_facts(detail: views.EvaluationDetail) -> list[tuple[str, Any]]:
    """What an evaluation run is: its state, the trained model it is about (its job's name), tasks, seeds, threshold
    and when it was planned."""
    episodes = sum(m.episodes for m in detail.models)
    planned = sum(m.planned_episodes or 0 for m in detail.models if not m.problem)
    if detail.finished:
        state = "finished"
    else:
        state = f"in progress: {episodes} of {planned or '?'} episodes scored"
    model_dir = detail.model_dir and str(detail.model_dir).rstrip("/").rsplit("/", 1)[-1]
    planned_at = _stat(detail.plan, "planned_at")
    when = (datetime.fromtimestamp(planned_at, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
            if isinstance(planned_at, int | float) else None)
    return [("state", state), ("trained model", model_dir or "none (the servers as they are)"),
            ("held-out tasks", len(detail.tasks)), ("seeds", detail.seeds),
            ("resolved at recall ≥", detail.threshold), ("planned", when)]


def _percent(value: Any) -> str:
    """A share as a percentage with one decimal, as the report's Markdown table has it (the `percent` filter)."""
    return f"{100 * value:.1f}%" if isinstance(value, int | float) and not isinstance(value, bool) else "—"


def _plots(names: list[str]) -> list[str]:
    """Every plot among the dataset's files: those of PLOTS in its order (the funnel first), then any other."""
    return sorted((name for name in names if name.endswith(".png")),
                  key=lambda name: (PLOTS.index(name) if name in PLOTS else len(PLOTS), name))


def _stat(stats: dict | None, *keys: str) -> Any:
    value: Any = stats
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _preview(content: str) -> str:
    """A message's first line of text: wrapper tags (`<pr_description>`, `<output>`) dropped, a tool's return code
    kept as `[exit N]`, so that the collapsed list tells the turns apart (the `preview` filter)."""
    code = _RETURNCODE.search(content)
    lines = (_TAG.sub("", line).strip() for line in _RETURNCODE.sub("", content).splitlines())
    return _short((f"[exit {code.group(1)}] " if code else "") + next((line for line in lines if line), ""), 100)


def _short(text: str, limit: int) -> str:
    """At most about `limit` characters, cut after a whole word (the `short` filter)."""
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " …"


# Next to this module wherever the plugins folder goes (the images copy plugins/ whole). Autoescape stays on for the
# HTML the templates write; `finalize` escapes each printed value, so none needs `|e` and none may be `|safe`.
_TEMPLATES = Environment(loader=FileSystemLoader(Path(__file__).with_name("sera_viewer_templates")), autoescape=True,
                         undefined=StrictUndefined, finalize=_escape, trim_blocks=True, lstrip_blocks=True)
_TEMPLATES.filters.update(plain=_plain, preview=_preview, short=_short, percent=_percent)
_TEMPLATES.globals.update(stat=_stat)


def _page(request: Request, template: str, title: str, crumbs: list[tuple[str, str]], *,
          title_badge: str | None = None, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A whole page: `template` extends base.html.j2, which shows the breadcrumbs (text, href) back to the index and
    the title with an optional badge; `url(*names)` in the templates is `_url` for this request."""
    page = _TEMPLATES.get_template(template).render(url=partial(_url, request), title=title, crumbs=crumbs,
                                                     title_badge=title_badge, **context)
    return HTMLResponse(page, status_code=status_code)
