"""Demonstration issues from a GitHub repository's own issues, cached in the repository's store.

SERA's PR writer imitated 500 SWE-bench Verified issues, or bodies that a separate script (`scrape_github.py`) wrote
to a file passed by hand, without titles. Here `synth.demo_issues_from` names the repository: the synthesize step
lists its issues with PyGithub (pull requests skipped), keeps title and cleaned body of those of a useful length, and
caches them in `<storage_root>/<repo>/cache/demo_issues.json` for `refresh_days`, so neither instances nor batches
nor later runs ask GitHub again. The token travels in a header only: it is never cached, logged or put in an error.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import requests
from github import Auth, Github, GithubException
from github.GithubException import BadCredentialsException, RateLimitExceededException
from github.GithubObject import GithubObject
from github.Issue import Issue
from urllib3.util.retry import Retry

from sera_ops.redaction import redact
from sera_ops.settings import GitHubDemoIssues, MirrorSettings, SecretLookup, SynthSettings, resolve_secret
from sera_ops.store.io import StorePath, atomic_write_json, read_json
from sera_ops.synth import writer
from sera_ops.synth.writer import DemoIssue

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.github.com"
TOKEN_ENV = "GITHUB_TOKEN"
SCAN_FACTOR = 10
"""List at most this many items per wanted issue: GitHub's issue listing includes pull requests, which are skipped."""
CONFIG_STATUSES = (401, 404, 410, 422)
"""Answers that come back on every retry: bad token, no such repository (or not visible), issues disabled, bad query."""

_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_NO_RESPONSE = re.compile(r"^[ \t]*_No response_[ \t]*$", re.MULTILINE)
"""What GitHub issue forms write for an unanswered field."""
_EMPTY_SECTION = re.compile(r"^(#{1,6})[ \t][^\n]*\n+(?=\1[ \t]|\Z)", re.MULTILINE)
_BLANK_RUNS = re.compile(r"\n{3,}")


class DemoIssuesError(RuntimeError):
    """Demonstration issues could not be had; the message names the repository and the API URL, never the token.

    `permanent` errors (a wrong repository, token or filter) fail the synthesize task at once; the others (GitHub
    unreachable, rate-limited or failing) are retried like any network error.
    """

    def __init__(self, message: str, *, permanent: bool):
        super().__init__(message)
        self.permanent = permanent


def pool_for(settings: SynthSettings, platform_github: MirrorSettings | None, connection_lookup: SecretLookup | None,
             cache: StorePath) -> list[DemoIssue]:
    """The writer's pool for a run: the repository's GitHub issues when `synth.demo_issues_from` is set (fetched once
    into `cache`), otherwise the packaged pool or the `synth.demo_issues` file. Called once at the start of each
    synthesize task."""
    source = settings.demo_issues_from
    if source is None:
        return writer.demo_pool(settings)
    api_url, token = endpoint(source, platform_github, connection_lookup)
    try:
        return cached_pool(source, api_url, token, cache)
    except DemoIssuesError as error:
        if error.permanent or source.fallback != "packaged":
            raise
        log.warning("%s; using the packaged demonstration pool instead (synth.demo_issues_from.fallback)", error)
        return writer.demo_pool(settings)


def endpoint(source: GitHubDemoIssues, platform_github: MirrorSettings | None,
             connection_lookup: SecretLookup | None = None) -> tuple[str, str | None]:
    """API URL and token (None: anonymous). The platform's token is only sent to the platform's own API URL, so a
    demonstration source on another GitHub never receives it."""
    platform_url = platform_github.api_url if platform_github else DEFAULT_API_URL
    api_url = source.api_url or platform_url
    if source.token is not None:
        token = resolve_secret(source.token, connection_lookup)
        if not token:
            raise DemoIssuesError(f"no GitHub token for demonstration issues from {source.github}: looked in "
                                  f"{source.token.model_dump(exclude_none=True)} (synth.demo_issues_from.token)",
                                  permanent=True)
        return api_url, token
    if platform_github is not None and api_url == platform_url:
        return api_url, resolve_secret(platform_github.token, connection_lookup)
    return api_url, None


def scrape(source: GitHubDemoIssues, platform_github: MirrorSettings | None) -> list[DemoIssue]:
    """`sera scrape-issues`: the issues `fetch` keeps, for a `synth.demo_issues` file. The token is the platform's
    `github.token` for its own API URL, or $GITHUB_TOKEN when the platform mirrors nowhere (as the `gh` tool reads it):
    never one platform's token sent to another GitHub."""
    api_url, token = endpoint(source, platform_github)
    if platform_github is None:
        token = os.environ.get(TOKEN_ENV) or None
    return fetch(source, api_url, token)


def cached_pool(source: GitHubDemoIssues, api_url: str, token: str | None, cache_path: Path,
                per_page: int = 100) -> list[DemoIssue]:
    """The cached issues while younger than `refresh_days`, else freshly fetched ones (and the cache rewritten).
    When a refresh fails for a transient reason, an outdated cache of the same source is used, with a warning."""
    key = {"github": source.github, "api_url": api_url,
           **source.model_dump(include={"state", "labels", "max_issues", "min_chars", "max_chars"})}
    cached = _read_cache(cache_path, key)
    if cached is not None and time.time() - cached[0] < source.refresh_days * 86400:
        return cached[1]
    try:
        issues = fetch(source, api_url, token, per_page)
    except DemoIssuesError as error:
        if error.permanent or cached is None:
            raise
        log.warning("%s; using the demonstration issues cached on %s", error, _utc(cached[0]))
        return cached[1]
    fetched_at = time.time()
    atomic_write_json(cache_path, {"key": key, "fetched_at": fetched_at, "fetched_at_utc": _utc(fetched_at),
                                   "issues": [{"id": issue.id, "text": issue.text} for issue in issues]})
    return issues


def fetch(source: GitHubDemoIssues, api_url: str, token: str | None, per_page: int = 100) -> list[DemoIssue]:
    """Up to `max_issues` issues of `source.state`, newest first, as "title, blank line, cleaned body"."""
    where = f"demonstration issues from {source.github} at {api_url}"
    kept: list[DemoIssue] = []
    skipped = {"pull requests": 0, "too short": 0, "too long": 0}
    scanned = 0
    # No waiting out rate limits inside the task (PyGithub's default retry sleeps until the reset): fail, and let
    # the task's retries come back later.
    retry = Retry(total=2, backoff_factor=0.5, status_forcelist=(500, 502, 503, 504), allowed_methods=("GET",))
    labels = {"labels": source.labels} if source.labels else {}
    try:
        with Github(base_url=api_url, auth=Auth.Token(token) if token else None, per_page=per_page, timeout=30,
                    retry=retry, lazy=True) as github:
            listing = github.get_repo(source.github).get_issues(state=source.state, sort="created",
                                                                direction="desc", **labels)
            for issue in map(_as_listed, listing):
                scanned += 1
                body = clean_body(issue.get("body"))
                reason = "pull requests" if "pull_request" in issue else _length_problem(body, source)
                if reason:
                    skipped[reason] += 1
                else:
                    kept.append(DemoIssue(f"{source.github}#{issue['number']}",
                                          f"{(issue.get('title') or '').strip()}\n\n{body}"))
                if len(kept) >= source.max_issues or scanned >= source.max_issues * SCAN_FACTOR:
                    break
    except BadCredentialsException:
        problem = ("rejected the token; check synth.demo_issues_from.token (or the platform's github.token)" if token
                   else "needs a token; set synth.demo_issues_from.token")
        raise DemoIssuesError(f"{where}: GitHub {problem}", permanent=True) from None
    except RateLimitExceededException as error:
        raise DemoIssuesError(redact(f"{where}: rate limit exceeded ({_describe(error)}); a token raises the "
                                      "limit", [token or ""]), permanent=False) from None
    except GithubException as error:
        permanent = error.status in CONFIG_STATUSES
        hint = "; check synth.demo_issues_from (the repository, its visibility to the token, labels)" \
            if permanent else ""
        raise DemoIssuesError(redact(f"{where}: GitHub answered {_describe(error)}{hint}", [token or ""]),
                              permanent=permanent) from None
    except requests.RequestException as error:
        raise DemoIssuesError(redact(f"cannot reach the GitHub API at {api_url} for demonstration issues from "
                                      f"{source.github}: {error}", [token or ""]), permanent=False) from None
    counts = ", ".join(f"{count} {reason}" for reason, count in skipped.items() if count)
    if not kept:
        raise DemoIssuesError(f"{where}: none of the {scanned} {source.state} issue(s) listed is usable "
                              f"({counts or 'none listed'}); choose another repository or widen "
                              "synth.demo_issues_from (state, labels, min_chars, max_chars)", permanent=True)
    log.info("%s: kept %d of %d listed (skipped: %s)", where, len(kept), scanned, counts or "none")
    return kept


def clean_body(body: str | None) -> str:
    """An issue body without what its template left: HTML comments (template instructions), issue forms' "_No
    response_" and the headings of sections left empty; line ends normalised, blank runs collapsed."""
    text = (body or "").replace("\r\n", "\n").replace("\r", "\n")
    text = _NO_RESPONSE.sub("", _HTML_COMMENT.sub("", text))
    text = "\n".join(line.rstrip() for line in text.split("\n")).strip() + "\n"
    return _BLANK_RUNS.sub("\n\n", _EMPTY_SECTION.sub("", text)).strip()


def _as_listed(issue: Issue) -> dict[str, Any]:
    """The issue as the listing gave it. `Issue.pull_request` and `Issue.raw_data` fetch the whole issue again when a
    key is missing, which `pull_request` always is for an issue: one request per issue instead of one per page."""
    return GithubObject.raw_data.fget(issue)


def _length_problem(body: str, source: GitHubDemoIssues) -> str | None:
    if not body or len(body) < source.min_chars:
        return "too short"
    return "too long" if len(body) > source.max_chars else None


def _read_cache(path: Path, key: dict[str, Any]) -> tuple[float, list[DemoIssue]] | None:
    """(fetched_at, issues) of a readable cache made for the same source and filters; None otherwise."""
    try:
        data = read_json(path)
        if data["key"] != key:
            return None
        return float(data["fetched_at"]), [DemoIssue(str(issue["id"]), str(issue["text"])) for issue in data["issues"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("ignoring the unreadable demonstration-issue cache %s (%s)", path, error)
        return None


def _describe(error: GithubException) -> str:
    message = error.data.get("message") if isinstance(error.data, dict) else error.data
    return f"{error.status} {message or error.message or ''}".strip()


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
