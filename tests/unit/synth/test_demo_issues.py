"""Demonstration issues from GitHub: real PyGithub against the local GitHub double over loopback, the cache in the
store, failures (named, token-free, permanent or not), and a synthesize step imitating a scraped issue."""
import functools
import json
import logging
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sera_ops import cli, pipeline, prompts
from sera_ops.errors import is_permanent
from sera_ops.pipeline.context import RunContext
from sera_ops.settings import (
    BatchSettings,
    ConfigError,
    GitHubDemoIssues,
    MirrorSettings,
    SecretRef,
    SynthSettings,
    load_platform,
    load_repo,
)
from sera_ops.store.io import read_json
from sera_ops.synth import demo_issues, writer
from sera_ops.synth.demo_issues import DemoIssuesError, cached_pool, clean_body, endpoint, fetch
from sera_ops.synth.writer import DemoIssue
from sera_ops.testing.local_github import LocalGitHub
from sera_ops.testing.scripted_teacher import ScriptedTeacher, ScriptedTeacherConfig
from tests.support.pipeline import make_context, prepare

TOKEN = "ghp_demoIssuesToken0123456789abcdef"
REPO = "octo/widgets"
BODY = ("<!-- Please describe the problem. Delete this comment. -->\r\n#### Steps\r\n\r\nCalling `widget({n})` raises "
        "ValueError instead of returning the widget.\r\n\r\n\r\n\r\n#### Version\r\n\r\n_No response_\r\n\r\n"
        "#### Notes\r\n\r\nIt worked in 1.2, broke after upgrading; happy to test a fix.   \r\n")


def seeded_issues() -> list[dict]:
    """30 items, newest last: every 5th a pull request, #3/#13/#23 open, #7/#17/#27 stubs; odd numbers are bugs."""
    issues = []
    for number in range(1, 31):
        issue = {"number": number, "title": f"widget({number}) fails ", "state": "closed",
                 "body": BODY.format(n=number), "labels": ["bug"] if number % 2 else ["question"]}
        if number % 5 == 0:
            issue["pull_request"] = {"url": f"https://example.invalid/pulls/{number}"}
        elif number % 10 == 3:
            issue["state"] = "open"
        elif number % 10 == 7:
            issue["body"] = "broken" if number != 17 else None
        issues.append(issue)
    return issues


USABLE = [n for n in range(30, 0, -1) if n % 5 and n % 10 not in (3, 7)]
"""Closed issues with a real body, newest first: 18 of the 30."""


@pytest.fixture(autouse=True)
def unthrottled_client(monkeypatch):
    """PyGithub spaces requests 0.25 s apart to spare GitHub; the double needs no such courtesy."""
    monkeypatch.setattr(demo_issues, "Github", functools.partial(demo_issues.Github, seconds_between_requests=None,
                                                                 seconds_between_writes=None))


@pytest.fixture
def github(tmp_path: Path):
    with LocalGitHub(tmp_path / "github", ["acme"], TOKEN) as double:
        double.seed_issues(REPO, seeded_issues())
        yield double


def source(**settings) -> GitHubDemoIssues:
    return GitHubDemoIssues(**{"github": REPO, **settings})


def issue_pages(github: LocalGitHub) -> list[str]:
    return [r.path for r in github.requests if r.path.startswith(f"/repos/{REPO}/issues")]


def test_fetch_skips_pull_requests_open_issues_and_stubs_across_pages(github, caplog):
    with caplog.at_level(logging.DEBUG):
        issues = fetch(source(min_chars=50), github.url, TOKEN, per_page=4)
    assert [issue.id for issue in issues] == [f"{REPO}#{n}" for n in USABLE]
    assert issues[0].text == ("widget(29) fails\n\n#### Steps\n\nCalling `widget(29)` raises ValueError instead of "
                              "returning the widget.\n\n#### Notes\n\nIt worked in 1.2, broke after upgrading; happy "
                              "to test a fix.")
    pages = issue_pages(github)
    assert len(pages) == 7 and all("per_page=4" in page and "state=closed" in page for page in pages)  # 27 closed
    assert "page=7" in pages[-1] and all(r.status == 200 for r in github.requests)
    assert "kept 18 of 27 listed (skipped: 6 pull requests, 3 too short)" in caplog.text
    assert TOKEN not in caplog.text


def test_max_issues_stops_listing_early_and_labels_filter_on_the_server(github):
    assert [i.id for i in fetch(source(max_issues=3), github.url, TOKEN, per_page=4)] == [
        f"{REPO}#{n}" for n in (29, 28, 26)]
    assert len(issue_pages(github)) == 2
    bugs = fetch(source(labels=["bug"], state="all"), github.url, TOKEN, per_page=100)
    assert [i.id for i in bugs] == [f"{REPO}#{n}" for n in (29, 23, 21, 19, 13, 11, 9, 3, 1)]
    assert "labels=bug" in issue_pages(github)[-1]


@pytest.mark.parametrize(("synth", "field", "hint"), [
    ("{demo_issues_from: {github: not-a-repo}}", "synth.demo_issues_from.github", "owner/name"),
    ("{demo_issues_from: {github: a/b, min_chars: 900, max_chars: 800}}", "synth.demo_issues_from.max_chars",
     "greater than min_chars"),
    ("{demo_issues: pool.json, demo_issues_from: {github: a/b}}", "synth.demo_issues_from", "not both"),
    ("{demo_issues_from: {github: a/b, fallback: packed}}", "synth.demo_issues_from.fallback", "'packaged'"),
    ("{demo_issues_from: {github: a/b, token: {}}}", "synth.demo_issues_from.token", "connection"),
    ("{demo_issues_from: {github: a/b, state: merged}}", "synth.demo_issues_from.state", "'closed'"),
])
def test_settings_errors_name_file_and_field(tmp_path, synth, field, hint):
    (tmp_path / "repos").mkdir()
    (tmp_path / "platform.yaml").write_text("storage_root: store\ndefaults: {model_server: t}\n"
                                            "model_servers: {t: {base_url: 'http://127.0.0.1:9/v1', model: m}}\n")
    repo_file = tmp_path / "repos" / "demo.yaml"
    repo_file.write_text(f"source: bundled:tinyledger\nsynth: {synth}\n")
    with pytest.raises(ConfigError) as caught:
        load_repo(repo_file, load_platform(tmp_path / "platform.yaml"))
    assert (caught.value.file, caught.value.field) == (str(repo_file), field) and hint in caught.value.problem


def test_clean_body_drops_template_leftovers():
    assert clean_body(None) == clean_body("<!-- only the template -->\r\n### What\r\n\r\n_No response_\r\n") == ""
    assert clean_body("### A\n\n_No response_\n\n### B\ntext\n\n\n\nmore  ") == "### B\ntext\n\nmore"


def test_cache_saves_requests_and_never_holds_the_token(github, tmp_path):
    cache = tmp_path / "store" / "demo" / "cache" / "demo_issues.json"
    first = cached_pool(source(), github.url, TOKEN, cache, per_page=10)
    requests_made = len(github.requests)
    assert cached_pool(source(), github.url, TOKEN, cache, per_page=10) == first
    assert len(github.requests) == requests_made
    assert TOKEN not in cache.read_text()
    assert read_json(cache)["key"]["github"] == REPO and len(read_json(cache)["issues"]) == len(USABLE)

    data = read_json(cache)
    cache.write_text(json.dumps(data | {"fetched_at": data["fetched_at"] - 8 * 86400}))  # older than refresh_days
    cached_pool(source(), github.url, TOKEN, cache, per_page=10)
    assert len(github.requests) > requests_made
    requests_made = len(github.requests)
    narrower = cached_pool(source(labels=["bug"]), github.url, TOKEN, cache, per_page=10)  # other filters
    assert len(github.requests) > requests_made and len(narrower) < len(first)


def test_unreachable_api_is_a_retryable_error_naming_repository_and_url(tmp_path, caplog):
    with LocalGitHub(tmp_path / "gone", ["acme"], TOKEN) as double:
        url = double.url
    with caplog.at_level(logging.DEBUG), pytest.raises(DemoIssuesError) as caught:
        cached_pool(source(), url, TOKEN, tmp_path / "cache.json")
    message = str(caught.value)
    assert message.startswith(f"cannot reach the GitHub API at {url} for demonstration issues from {REPO}: ")
    assert not is_permanent(caught.value)
    assert TOKEN not in message and TOKEN not in caplog.text and not (tmp_path / "cache.json").exists()


def test_an_outdated_cache_serves_while_github_is_down(github, tmp_path, caplog):
    cache = tmp_path / "cache.json"
    fresh = cached_pool(source(), github.url, TOKEN, cache)
    data = read_json(cache)
    cache.write_text(json.dumps(data | {"fetched_at": data["fetched_at"] - 30 * 86400}))
    url = github.url
    github.stop()
    with caplog.at_level(logging.WARNING):
        assert cached_pool(source(), url, TOKEN, cache) == fresh
    assert "cannot reach the GitHub API" in caplog.text and "using the demonstration issues cached on" in caplog.text


@pytest.mark.parametrize(("settings", "token", "expected"), [
    ({}, "ghp_wrongTokenThatMustNotLeak42", "rejected the token"),
    ({}, None, "needs a token"),
    ({"github": "octo/missing"}, TOKEN, "octo/missing at http://127.0.0.1:"),
    ({"min_chars": 5000}, TOKEN, "none of the 27 closed issue(s) listed is usable (6 pull requests, 21 too short)"),
])
def test_configuration_problems_are_permanent_and_token_free(github, settings, token, expected):
    with pytest.raises(DemoIssuesError) as caught:
        fetch(source(**settings), github.url, token)
    assert expected in str(caught.value) and is_permanent(caught.value)
    assert not token or token not in str(caught.value)


def test_endpoint_sends_the_platform_token_only_to_the_platform_api(monkeypatch):
    monkeypatch.setenv("SERA_TEST_PLATFORM_GH", "platform-token")
    monkeypatch.delenv("SERA_TEST_DEMO_GH", raising=False)
    platform = MirrorSettings(api_url="https://ghe.example/api/v3", organisation="acme",
                              token=SecretRef(env="SERA_TEST_PLATFORM_GH"))
    assert endpoint(source(), platform) == ("https://ghe.example/api/v3", "platform-token")
    assert endpoint(source(api_url="https://api.github.com"), platform) == ("https://api.github.com", None)
    assert endpoint(source(), None) == ("https://api.github.com", None)
    with pytest.raises(DemoIssuesError, match="SERA_TEST_DEMO_GH") as caught:
        endpoint(source(token=SecretRef(env="SERA_TEST_DEMO_GH")), platform)
    assert is_permanent(caught.value)


def context_with(tmp_path: Path, teacher_url: str, demo_source: GitHubDemoIssues, **repo_overrides
                 ) -> pipeline.RunContext:
    ctx = make_context(tmp_path, teacher_url, **repo_overrides)
    ctx.spec = ctx.spec.model_copy(update={"synth": ctx.spec.synth.model_copy(
        update={"demo_issues_from": demo_source})})
    return ctx


def test_synthesize_imitates_a_scraped_issue(github, tmp_path, monkeypatch):
    monkeypatch.setenv("SERA_TEST_DEMO_GH", TOKEN)
    with ScriptedTeacher(ScriptedTeacherConfig()) as teacher:
        ctx = context_with(tmp_path, teacher.url, source(api_url=github.url, token={"env": "SERA_TEST_DEMO_GH"}),
                           batching=BatchSettings(batch_size=2))
        server = ctx.platform.model_servers["scripted"]  # two episodes at a time: batches of 2
        ctx.platform.model_servers["scripted"] = server.model_copy(update={"concurrency": 1, "episodes_per_slot": 2})
        batches = prepare(ctx)
        assert len(batches) == 2
        for batch in batches:
            pipeline.rollout_one(ctx, batch)
            assert pipeline.synthesize(ctx, batch)["ran"] > 0
    records = [read_json(path) for path in sorted(ctx.store.run_dir.rglob("synth.json"))]
    assert records and all(record["demo_id"] in {f"{REPO}#{n}" for n in USABLE} for record in records)
    assert all("#### Description" in record["synth_pr"] for record in records)  # the scraped issue's heading style
    assert len(issue_pages(github)) == 1  # one listing for all batches: the rest came from the store's cache
    cache = ctx.store.repo_dir / "cache" / "demo_issues.json"
    assert TOKEN not in cache.read_text()
    assert not [path for path in ctx.store.repo_dir.rglob("*") if path.is_file() and TOKEN.encode() in
                path.read_bytes()]


def test_packaged_fallback_only_when_configured_and_only_for_outages(tmp_path, github):
    with LocalGitHub(tmp_path / "gone", ["acme"], TOKEN) as double:
        gone = double.url
    ctx = context_with(tmp_path, "http://127.0.0.1:9/v1", source(api_url=gone, fallback="packaged"))
    assert all(issue.id.startswith("packaged[") for issue in _pool(ctx))
    ctx = context_with(tmp_path, "http://127.0.0.1:9/v1", source(api_url=gone))
    with pytest.raises(DemoIssuesError, match="cannot reach"):
        _pool(ctx)
    ctx = context_with(tmp_path, "http://127.0.0.1:9/v1", source(api_url=github.url, github="octo/missing",
                                                                 fallback="packaged"))
    with pytest.raises(DemoIssuesError, match="octo/missing") as caught:  # no token: a configuration problem
        _pool(ctx)
    assert is_permanent(caught.value)


def get(url: str, token: str | None = TOKEN):
    headers = {"Authorization": f"token {token}"} if token else {}
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5)


def test_double_lists_issues_like_github(github):
    with get(f"{github.url}/repos/{REPO}/issues?state=all&per_page=7&page=2") as answer:
        listed = json.loads(answer.read())
        link = answer.headers["Link"]
    assert [issue["number"] for issue in listed] == list(range(23, 16, -1))
    assert f'<{github.url}/repos/{REPO}/issues?state=all&per_page=7&page=3>; rel="next"' in link
    assert 'page=5>; rel="last"' in link and 'page=1>; rel="prev"' in link and 'page=1>; rel="first"' in link
    assert listed[0]["html_url"] == f"{github.url}/{REPO}/issues/23" and listed[0]["labels"][0]["name"] == "bug"
    with get(f"{github.url}/repos/{REPO}/issues") as answer:  # GitHub's defaults: open, 30 per page
        assert [issue["number"] for issue in json.loads(answer.read())] == [23, 13, 3]
        assert "Link" not in answer.headers
    for url, token, status in ((f"{github.url}/repos/{REPO}/issues", None, 401),
                               (f"{github.url}/repos/octo/other/issues", TOKEN, 404),
                               (f"{github.url}/repos/{REPO}/issues?state=shut", TOKEN, 422)):
        with pytest.raises(urllib.error.HTTPError) as caught:
            get(url, token)
        assert caught.value.code == status
    with pytest.raises(ValueError, match="already has an issue #3"):
        github.seed_issues(REPO, [{"number": 3, "title": "again"}])


def test_command_line_serves_seeded_issues(tmp_path):
    issues_file = tmp_path / "issues.json"
    issues_file.write_text(json.dumps({REPO: seeded_issues()[:3]}))
    process = subprocess.Popen(
        [sys.executable, "-m", "sera_ops.testing.local_github", "--root", str(tmp_path / "gh"), "--org", "acme",
         "--port", "0", "--token-env", "DOUBLE_TOKEN", "--issues", str(issues_file)],
        stdout=subprocess.PIPE, text=True, env=os.environ | {"DOUBLE_TOKEN": TOKEN})
    try:
        url = process.stdout.readline().strip()
        with get(f"{url}/repos/{REPO}/issues?state=all") as answer:
            assert [issue["title"] for issue in json.loads(answer.read())] == [f"widget({n}) fails " for n in (3, 2, 1)]
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


def platform_file(tmp_path: Path, github_section: str = "") -> Path:
    path = tmp_path / "platform.yaml"
    path.write_text("storage_root: store\ndefaults: {model_server: t}\n"
                    f"model_servers: {{t: {{base_url: 'http://127.0.0.1:9/v1', model: m}}}}\n{github_section}")
    return path


def test_scrape_issues_writes_a_demo_issues_file(github, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)  # the platform mirrors nowhere: the environment's token
    out = tmp_path / "ledger-issues.json"
    assert cli.main(["--platform", str(platform_file(tmp_path)), "scrape-issues", REPO, "-n", "4", "--out", str(out),
                     "--api-url", github.url, "--labels", "bug, "]) == 0
    assert capsys.readouterr().out == f"4 closed issue(s) of {REPO} written to {out} (use the file as " \
                                      "synth.demo_issues)\n"
    texts = prompts.load_demo_issues(out)
    assert [text.split("\n")[0] for text in texts] == [f"widget({n}) fails" for n in (29, 21, 19, 11)]  # odd: bugs
    assert texts == [issue.text for issue in fetch(source(labels=["bug"], max_issues=4), github.url, TOKEN)]
    assert all("<!--" not in text and "_No response_" not in text for text in texts)
    assert all("labels=bug&" in page or page.endswith("labels=bug") for page in issue_pages(github))
    pool = writer.demo_pool(SynthSettings(demo_issues=str(out)))
    assert [issue.id for issue in pool] == [f"ledger-issues.json[{n}]" for n in range(4)]


def test_scrape_issues_sends_the_platform_token_to_the_platform_api_only(github, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SERA_TEST_PLATFORM_GH", TOKEN)
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_mustNotBeSentAnywhere0123456789")
    platform = platform_file(tmp_path, f"github: {{api_url: '{github.url}', organisation: acme, "
                                       "token: {env: SERA_TEST_PLATFORM_GH}}\n")
    out = tmp_path / "issues.json"
    assert cli.main(["scrape-issues", REPO, "-n", "2", "--out", str(out), "--platform", str(platform)]) == 0
    assert len(prompts.load_demo_issues(out)) == 2
    with LocalGitHub(tmp_path / "other", ["acme"], TOKEN) as other:  # another GitHub: anonymous, so refused
        other_url = other.url
        assert cli.main(["scrape-issues", REPO, "-n", "2", "--out", str(tmp_path / "no.json"), "--platform",
                         str(platform), "--api-url", other_url]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: demonstration issues from {REPO} at {other_url}: GitHub needs a token")
    assert not (tmp_path / "no.json").exists() and "ghp_" not in error


def _pool(ctx: RunContext) -> list[DemoIssue]:
    return demo_issues.pool_for(ctx.spec.synth, ctx.platform.github, ctx.connection_lookup,
                                ctx.store.repo_store.demo_issues_cache)
