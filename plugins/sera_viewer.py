"""The SERA dataset viewer: a read-only look into the run store from the Airflow UI (Browse → SERA datasets).

Plain server-side HTML from the run store (`sera_ops.runs`): the runs of every repository with their counts, a run's
statistics, its dataset's files (card, Parquet, JSONL) and plots, per-instance progress, and one instance's task,
patches, synthetic PR, verdict and both trajectories. Dataset files are served only by name from a fixed list.
Trajectories hold whatever the model and the repository printed, so every value is HTML-escaped, and names from the
URL go through `sera_ops.runs`' checks (anything else is a 404). The storage root is read from the platform config on
every request, so `SERA_PLATFORM_CONFIG` and config edits apply without a restart.

Airflow does not authenticate plugin apps; this one asks for the same login as Airflow's own API (a bearer token, or
the UI's session cookie, which the embedded page sends along). A browser without a session is sent to Airflow's login
page, which brings it back; API clients get Airflow's 401.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import sera_airflow
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from sera_ops import runs
from sera_ops.config import load_platform
from sera_ops.store import CARD, PLOTS, SPLITS, STATS, RepoStore, StorePath, is_local

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


@app.exception_handler(runs.NotFound)
async def not_found(request: Request, exc: runs.NotFound) -> HTMLResponse:
    return _page(request, "Not found", [], f"<p>{_e(exc)}</p>", status_code=404)


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
    sections = []
    for repo in runs.list_repos(root):
        rows = [[_link(_url(request, repo, s.run_id), s.run_id) + (" " + _badge("latest") if s.is_latest else ""),
                 _e(s.modified.strftime("%Y-%m-%d %H:%M UTC")),
                 _e("assembled" if s.stats else "in progress"),
                 *(_cell(_stat(s.stats, *key)) for key in INDEX_COUNTS.values())]
                for s in runs.list_runs(root, repo)]
        sections.append(f'<h2 id="{_e(repo)}">{_e(repo)}</h2>'
                        + _table(["run", "modified", "state", *INDEX_COUNTS], rows))
    body = "".join(sections) or f"<p>No runs under <code>{_e(root)}</code> yet.</p>"
    return _page(request, "SERA datasets", [], body)


@app.get("/api/{repo}/{run}/stats")
def stats_json(repo: str, run: str) -> JSONResponse:
    detail = runs.run_detail(storage_root(), repo, run)
    if detail.stats is None:
        raise runs.NotFound(f"run {run} has no statistics yet (not assembled)")
    return JSONResponse(detail.stats)


@app.get("/{repo}/{run}", response_class=HTMLResponse)
def run_page(request: Request, repo: str, run: str) -> HTMLResponse:
    root = storage_root()
    detail = runs.run_detail(root, repo, run)
    every_count = _link(_url(request, "api", repo, run, "stats"), STATS)
    stats = (_summary(detail.stats) + f"<p>Every count: {every_count}</p>"
             if detail.stats else "<p>Not assembled yet: the statistics appear when the run's dataset is built.</p>")
    rows = [[_link(_url(request, repo, run, i.instance_id), i.instance_id), _e(i.start_fn),
             _breakable(i.start_fn_file), f"<code>{_e((i.commit or '')[:12])}</code>",
             _cell(i.rollout1_exit_status), _cell(i.rollout1_attempts), _cell(i.judged_good),
             _synthetic_pr(request, repo, run, i),
             _cell(i.rollout2_exit_status), _cell(i.recall), _cell(i.resolved), _errors(i.errors)]
            for i in detail.instances]
    instances = _table(["instance", "start function", "file", "commit", "rollout one", "attempts", "judged good",
                        "synthetic PR", "rollout two", "recall", "resolved", "errors"], rows)
    manifest = (f"<details><summary>manifest.json</summary><pre>{_e(json.dumps(detail.manifest, indent=2))}</pre>"
                "</details>" if detail.manifest else "")
    dataset = _dataset(request, root, repo, run) if detail.stats else ""
    body = f"<h2>Summary</h2>{stats}{dataset}<h2>Instances ({len(detail.instances)})</h2>{instances}{manifest}"
    return _page(request, f"{repo} / {run}", [(repo, _url(request) + f"#{quote(repo)}")], body,
                 badge="latest" if detail.is_latest else None)


@app.get("/{repo}/{run}/dataset/{name}")
def dataset_file(repo: str, run: str, name: str) -> Response:
    """One of the run's dataset files (DATASET_FILES or a plot): text and images inline, Parquet as a download."""
    root = storage_root()
    if not (name in DATASET_FILES or name.endswith(".png")) or name not in runs.dataset_files(root, repo, run):
        raise runs.NotFound(f"no dataset file {name!r} in run {run}")
    path = RepoStore(root, repo).run(run).dataset.dir / name
    media_type, inline = MEDIA_TYPES[Path(name).suffix]
    filename = None if inline else f"{repo}-{run}-{name}"
    headers = {"X-Content-Type-Options": "nosniff"}
    if is_local(path):
        return FileResponse(path, media_type=media_type, filename=filename, headers=headers)
    if filename:
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return Response(path.read_bytes(), media_type=media_type, headers=headers)


@app.get("/{repo}/{run}/{instance_id}", response_class=HTMLResponse)
def instance_page(request: Request, repo: str, run: str, instance_id: str) -> HTMLResponse:
    detail = runs.instance_detail(storage_root(), repo, run, instance_id)
    s = detail.status
    status = _key_values([
        ("start function", s.start_fn), ("file", s.start_fn_file), ("commit", s.commit),
        ("rollout one", s.rollout1_exit_status), ("attempts", s.rollout1_attempts), ("judged good", s.judged_good),
        ("synthetic PR", s.synthetic_pr), ("rollout two", s.rollout2_exit_status), ("recall", s.recall),
        ("resolved", s.resolved)])
    errors = "".join(f"<h3>{_e(stage)} failed</h3><pre>{_e(message)}</pre>" for stage, message in s.errors.items())
    duplicate = (f"<p>Its patch is the same as {_link(_url(request, repo, run, s.duplicate_of), s.duplicate_of)}'s, "
                 "which got the synthetic PR.</p>" if s.duplicate_of else "")
    attempts = _table(["attempt", "exit status", "changed lines", "judge's answer", "judged good", "judge calls"],
                      [[_cell(a.number), _cell(a.exit_status), _cell(a.changed_lines) if a.changed_lines else "empty",
                        _cell(a.judge_answer), _cell(a.judged_good), _cell(a.judge_calls)] for a in detail.attempts])
    body = (f"{status}{errors}{duplicate}"
            f"<h2>Rollout one: attempts and the judge</h2>{attempts if detail.attempts else _pre(None)}"
            f"<h2>Rollout one: task</h2>{_pre(detail.task)}"
            f"<h2>Rollout one: patch (P1)</h2>{_pre(detail.patch_one)}"
            f"<h2>Synthetic PR</h2>{_pre(detail.synthetic_pr)}"
            f"<h2>Rollout two: patch (P2)</h2>{_pre(detail.patch_two)}"
            f"<h2>Verdict</h2>{_verdict(detail.verdict)}"
            f"<h2>Rollout one: trajectory</h2>{_trajectory(detail.trajectory_one)}"
            f"<h2>Rollout two: trajectory</h2>{_trajectory(detail.trajectory_two)}")
    crumbs = [(repo, _url(request) + f"#{quote(repo)}"), (run, _url(request, repo, run))]
    return _page(request, instance_id, crumbs, body)


class SeraViewerPlugin(AirflowPlugin):
    name = "sera_viewer"
    fastapi_apps = [{"app": app, "url_prefix": "/sera", "name": "SERA datasets"}]
    # Shown in the UI's Browse menu, embedded in an iframe; relative so it follows the UI's base URL.
    external_views = [{"name": "SERA datasets", "href": "sera/", "url_route": "sera-datasets",
                       "destination": "nav", "category": "browse"}]


# ---------------------------------------------------------------- HTML (every dynamic value goes through _e)

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5rem; color: #1f2328; }
nav { margin-bottom: .5rem; color: #59636e; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: 13px; }
th, td { border: 1px solid #d1d9e0; padding: .2rem .45rem; text-align: left; vertical-align: top; }
.wide { overflow-x: auto; }
.funnel td.count { text-align: right; }
.funnel td.bar { width: 16rem; }
.funnel td.bar span { display: block; height: .9rem; background: #54aeff; }
.plots { display: flex; flex-wrap: wrap; gap: .5rem; }
.plots img { width: 380px; max-width: 100%; border: 1px solid #d1d9e0; }
summary code { color: #59636e; margin-left: .4rem; }
th { background: #f6f8fa; }
pre { background: #f6f8fa; padding: .6rem; overflow-x: auto; white-space: pre-wrap; word-break: break-word; }
details { border: 1px solid #d1d9e0; border-radius: 4px; margin: .3rem 0; padding: .2rem .6rem; }
summary { cursor: pointer; }
.badge { background: #1a7f37; color: #fff; border-radius: 8px; padding: 0 .45rem; font-size: 12px; }
.missing { color: #59636e; font-style: italic; }
.error { color: #cf222e; }
"""


_RETURNCODE = re.compile(r"<returncode>(-?\d+)</returncode>")
_TAG = re.compile(r"</?[A-Za-z_][\w-]*>")


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _url(request: Request, *names: str) -> str:
    """An absolute path inside this app, wherever Airflow mounted it (root_path carries the prefix)."""
    return request.scope.get("root_path", "").rstrip("/") + "/" + "/".join(quote(name, safe="") for name in names)


def _link(href: str, text: Any) -> str:
    return f'<a href="{_e(href)}">{_e(text)}</a>'


def _breakable(path: str | None) -> str:
    """A file path that may wrap after each `/`, so the instances table fits beside long paths."""
    return _e(path).replace("/", "/<wbr>")


def _badge(text: str) -> str:
    return f'<span class="badge">{_e(text)}</span>'


def _missing() -> str:
    return '<span class="missing">—</span>'


def _plain(value: Any) -> str:
    """A value as people read it: yes/no, two decimals, a list joined, `—` for nothing."""
    if value is None or value == []:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def _cell(value: Any) -> str:
    return _missing() if value is None or value == [] else _e(_plain(value))


def _pre(text: str | None) -> str:
    return f"<pre>{_e(text)}</pre>" if text else f"<p>{_missing()}</p>"


def _table(headers: Iterable[str], rows: list[list[str]]) -> str:
    """`rows` hold cells that are already HTML (built with _e/_cell/_link)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _key_values(pairs: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{_e(key)}</th><td>{_cell(value)}</td></tr>" for key, value in pairs)
    return f"<table>{rows}</table>"


def _summary(stats: dict) -> str:
    """The run's statistics as a reading: how many instances reached each stage (a bar against those sampled, the
    share of the stage before), what was lost where, and the facts of the run."""
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
    total, previous, rows = _stat(stats, "instances") or 0, None, []
    for label, key, note in stages:
        count = _stat(stats, key)
        share = f"{count / previous:.0%}" if isinstance(count, int) and previous else ""
        width = 100 * count / total if isinstance(count, int) and total else 0
        rows.append(f'<tr><th>{_e(label)}</th><td class="count">{_cell(count)}</td><td class="count">{share}</td>'
                    f'<td class="bar"><span style="width: {width:.0f}%"></span></td><td>{_e(note)}</td></tr>')
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
    return (f'<table class="funnel"><thead><tr><th>stage</th><th>count</th><th>of previous</th><th></th>'
            f'<th>notes</th></tr></thead><tbody>{"".join(rows)}</tbody></table>{_key_values(facts)}')


def _dataset(request: Request, root: StorePath, repo: str, run: str) -> str:
    """Links to the dataset's files and every plot it has (older runs have no card, Parquet or plots)."""
    names = runs.dataset_files(root, repo, run)
    links = " · ".join(_link(_url(request, repo, run, "dataset", name), label)
                       for name, label in DATASET_FILES.items() if name in names)
    pngs = sorted((name for name in names if name.endswith(".png")),
                  key=lambda name: (PLOTS.index(name) if name in PLOTS else len(PLOTS), name))  # the funnel first
    sources = [(name, _e(_url(request, repo, run, "dataset", name))) for name in pngs]
    plots = "".join(f'<a href="{src}"><img src="{src}" alt="{_e(name)}"></a>' for name, src in sources)
    return f'<h2>Dataset</h2><p>{links or _missing()}</p><div class="plots">{plots}</div>'


def _synthetic_pr(request: Request, repo: str, run: str, status: runs.InstanceStatus) -> str:
    """yes/no, or which instance's identical patch got the PR instead."""
    if status.duplicate_of:
        return "no: duplicate of " + _link(_url(request, repo, run, status.duplicate_of), status.duplicate_of)
    return _cell(status.synthetic_pr)


def _verdict(verdict: dict | None) -> str:
    """Rollout two's soft verification in one sentence: what share of P1's changed lines P2 has, against what."""
    if not verdict:
        return f"<p>{_missing()}</p>"
    outcome = "resolved" if verdict.get("resolved") else "not resolved"
    return (f"<p>Recall <b>{_cell(verdict.get('recall'))}</b> of P1's {_cell(verdict.get('target_lines'))} changed "
            f"lines (P2 changes {_cell(verdict.get('produced_lines'))}), threshold {_cell(verdict.get('threshold'))}: "
            f"<b>{outcome}</b>.</p>")


def _stat(stats: dict | None, *keys: str) -> Any:
    value: Any = stats
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _errors(errors: dict[str, str]) -> str:
    return "<br>".join(f'<span class="error" title="{_e(message)}">{_e(stage)}</span>'
                       for stage, message in errors.items()) or ""


def _trajectory(messages: list[runs.Message] | None) -> str:
    if messages is None:
        return f"<p>{_missing()}</p>"
    items = []
    for number, message in enumerate(messages, 1):
        calls = "".join(f"<pre>{_e(call)}</pre>" for call in message.tool_calls)
        command = f"<code>{_e(_short(message.tool_calls[0], 80))}</code>" if message.tool_calls else ""
        items.append(f"<details><summary>#{number} <b>{_e(message.role)}</b> {_e(_preview(message.content))}"
                     f"{command}</summary>"
                     f"<pre>{_e(message.content)}</pre>{calls}</details>")
    return f"<p>{len(messages)} messages</p>" + "".join(items)


def _preview(content: str) -> str:
    """A message's first line of text: wrapper tags (`<pr_description>`, `<output>`) dropped, a tool's return code
    kept as `[exit N]`, so that the collapsed list tells the turns apart."""
    code = _RETURNCODE.search(content)
    lines = (_TAG.sub("", line).strip() for line in _RETURNCODE.sub("", content).splitlines())
    return _short((f"[exit {code.group(1)}] " if code else "") + next((line for line in lines if line), ""), 100)


def _short(text: str, limit: int) -> str:
    """At most about `limit` characters, cut after a whole word."""
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " …"


def _page(request: Request, title: str, crumbs: list[tuple[str, str]], body: str, *, badge: str | None = None,
          status_code: int = 200) -> HTMLResponse:
    """A whole page: breadcrumbs (text, href) back to the index, the title, and `body` (already HTML)."""
    nav = " / ".join([_link(_url(request), "SERA datasets")] + [_link(href, text) for text, href in crumbs])
    heading = _e(title) + (" " + _badge(badge) if badge else "")
    return HTMLResponse(
        f'<!doctype html><html><head><meta charset="utf-8"><title>{_e(title)}</title><style>{STYLE}</style>'
        f"</head><body><nav>{nav}</nav><h1>{heading}</h1>{body}</body></html>", status_code=status_code)
