"""Stage 1: mirror a repository into a GitHub organisation, private by default, history and all.

SERA mirrored through swesmith (docs/sera-behaviour.md#mirroring): one public-by-default repository per commit, holding
a single squashed "Initial commit", created with `ghapi` and pushed over SSH. Here one repository per source keeps every
branch and tag plus one ref per selected commit (`refs/sera/commits/<sha>`), so the exact commits a dataset was built
from stay fetchable even after branches move. The repository is private unless configured otherwise, and an existing
mirror's visibility is never changed (only warned about). The push goes over HTTPS with the token handed to git through
environment variables only: never in the URL, argv or a file, and never in an error message.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import requests
from github import Auth, Github, GithubException
from github.GithubException import BadCredentialsException, UnknownObjectException
from github.Organization import Organization
from github.Repository import Repository

from sera_ops.settings import MirrorSettings, SecretLookup, resolve_secret
from sera_ops.sources.repos import GIT_ENV

log = logging.getLogger(__name__)

COMMIT_REF_PREFIX = "refs/sera/commits/"
MIRROR_REFSPECS = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
"""Forced, like a mirror should be; no pruning, so commit refs pushed by earlier runs stay."""

REPO_NAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_UPDATED_FLAGS = ("*", "+", " ", "-")
"""`git push --porcelain` flags of refs that changed: new, forced, fast-forward, deleted (`=` is up to date)."""

_INHERITED_GIT_VARIABLES = re.compile(r"^(GIT_CONFIG_(COUNT|KEY_\d+|VALUE_\d+|PARAMETERS)|GIT_TRACE\w*|GIT_CURL_VERBOSE"
                                      r"|GIT_ASKPASS|SSH_ASKPASS)$")
"""Variables from the caller's environment that could collide with ours, print headers, or prompt for a password."""


class MirrorError(RuntimeError):
    """The mirror could not be made; the message says what to fix and never contains the token."""


@dataclass(frozen=True)
class MirrorResult:
    """What the mirror looks like after this run; `pushed` lists the remote refs this run created or moved."""

    full_name: str
    clone_url: str
    html_url: str
    created: bool
    private: bool
    pushed: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_token(settings: MirrorSettings, connection_lookup: SecretLookup | None = None) -> str:
    """The GitHub token named by `settings.token`, or an error that says where it was looked for."""
    token = resolve_secret(settings.token, connection_lookup)
    if not token:
        where = settings.token.model_dump(exclude_none=True) if settings.token else "nowhere (github.token is unset)"
        raise MirrorError(f"no GitHub token found for mirroring into '{settings.organisation}': looked in {where}")
    return token


def mirror_repository(source: Path, name: str, settings: MirrorSettings, token: str, commits: Sequence[str]
                      ) -> MirrorResult:
    """Get or create `<organisation>/<name_prefix><name>` and push all branches, tags and one ref per commit."""
    repo_name = settings.name_prefix + name
    if not REPO_NAME_PATTERN.match(repo_name) or repo_name in (".", ".."):
        raise MirrorError(f"'{repo_name}' is not a usable GitHub repository name: use letters, digits, '.', '-' "
                          "and '_', at most 100 characters")
    if not token:
        raise MirrorError(f"an empty GitHub token was given for mirroring into '{settings.organisation}'")
    shas = resolve_commits(source, commits)
    try:
        with Github(base_url=settings.api_url, auth=Auth.Token(token), timeout=60) as github:
            organisation = _organisation(github, settings)
            repository, created = _get_or_create(organisation, repo_name, settings)
            if created and settings.disable_actions:
                _disable_actions(github, repository)
            pushed = push_mirror(source, repository.clone_url, token, shas)
            _follow_default_branch(source, repository)
            result = MirrorResult(full_name=repository.full_name, clone_url=repository.clone_url,
                                  html_url=repository.html_url, created=created, private=repository.private,
                                  pushed=pushed)
    except GithubException as error:
        raise MirrorError(_redact(f"GitHub API at {settings.api_url} failed: {_describe(error)}", token)) from None
    except requests.RequestException as error:
        raise MirrorError(_redact(f"cannot reach the GitHub API at {settings.api_url}: {error}", token)) from None
    log.info("mirrored %s to %s (%s, %d refs updated)", source, result.full_name,
             "created" if created else "existing", len(pushed))
    return result


def resolve_commits(source: Path, commits: Sequence[str]) -> list[str]:
    """Full SHAs of `commits` in `source`, in order and without duplicates; fails on any that is not there."""
    if _git(["rev-parse", "--git-dir"], cwd=source, env=_clean_env()).returncode != 0:
        raise MirrorError(f"{source} is not a git repository; mirror a local clone (bare or not)")
    shas: list[str] = []
    for commit in commits:
        result = _git(["rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"], cwd=source, env=_clean_env())
        if result.returncode != 0:
            raise MirrorError(f"commit {commit!r} is not in {source}; fetch it or fix the selected commits")
        sha = result.stdout.strip()
        if sha not in shas:
            shas.append(sha)
    return shas


def push_mirror(source: Path, clone_url: str, token: str, shas: Sequence[str]) -> list[str]:
    """Push branches, tags and `refs/sera/commits/<sha>` to `clone_url`; returns the remote refs that changed."""
    refspecs = [*MIRROR_REFSPECS, *(f"{sha}:{COMMIT_REF_PREFIX}{sha}" for sha in shas)]
    env = authenticated_git_env(clone_url, token)
    result = _git(["push", "--porcelain", clone_url, *refspecs], cwd=source, env=env)
    if result.returncode != 0:
        output = "\n".join(part.strip() for part in (result.stderr, result.stdout) if part.strip())
        hint = ""
        if re.search(r"could not read Username|Authentication failed|\b401\b|\b403\b", output):
            hint = (" (the server refused the token for git over HTTPS: it needs push access to the repository, "
                    "and the 'workflow' scope if the history contains .github/workflows)")
        raise MirrorError(_redact(f"git push from {source} to {clone_url} failed{hint}:\n{output}", token))
    pushed = []
    for line in result.stdout.splitlines():
        flag, _, rest = line.partition("\t")
        if flag in _UPDATED_FLAGS and ":" in rest:
            pushed.append(rest.split("\t")[0].split(":", 1)[1])
    return pushed


def authenticated_git_env(url: str, token: str) -> dict[str, str]:
    """Environment for a git command that authenticates to `url` (only) with `token` as an HTTP header.

    The header goes through `GIT_CONFIG_COUNT` variables, which git reads like `-c` options but which, unlike argv,
    other users cannot see; GitHub accepts the token as the Basic-auth password of user `x-access-token`.
    """
    credentials = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    return _clean_env() | {
        "GIT_CONFIG_COUNT": "2",
        "GIT_CONFIG_KEY_0": f"http.{url}.extraHeader", "GIT_CONFIG_VALUE_0": f"Authorization: Basic {credentials}",
        "GIT_CONFIG_KEY_1": "credential.helper", "GIT_CONFIG_VALUE_1": "",
    }


def _clean_env() -> dict[str, str]:
    inherited = {key: value for key, value in os.environ.items() if not _INHERITED_GIT_VARIABLES.match(key)}
    return inherited | GIT_ENV


def _git(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    except (FileNotFoundError, NotADirectoryError) as error:
        raise MirrorError(f"cannot run git in {cwd}: {error.strerror}") from None


def _organisation(github: Github, settings: MirrorSettings) -> Organization:
    try:
        return github.get_organization(settings.organisation)
    except BadCredentialsException:
        raise MirrorError(f"GitHub at {settings.api_url} rejected the token (401 Bad credentials); check the secret "
                          "configured as github.token") from None
    except UnknownObjectException:
        raise MirrorError(f"GitHub organisation '{settings.organisation}' was not found at {settings.api_url} (or "
                          "the token cannot see it); create it or fix github.organisation") from None


def _get_or_create(organisation: Organization, repo_name: str, settings: MirrorSettings) -> tuple[Repository, bool]:
    try:
        repository = organisation.get_repo(repo_name)
    except UnknownObjectException:
        try:
            repository = organisation.create_repo(repo_name, private=settings.private, description=(
                f"SERA mirror of {repo_name}"), has_issues=False, has_wiki=False, has_projects=False)
            log.info("created %s mirror %s", "private" if repository.private else "public", repository.full_name)
            return repository, True
        except GithubException as error:
            if error.status == 422 and "already exists" in str(error.data):
                repository = organisation.get_repo(repo_name)  # created concurrently by another run
            else:
                raise MirrorError(f"cannot create repository '{repo_name}' in organisation "
                                  f"'{settings.organisation}': {_describe(error)}") from None
    if repository.private != settings.private:
        log.warning("mirror %s is %s but mirror.private is %s; its visibility is left unchanged", repository.full_name,
                    "private" if repository.private else "public", settings.private)
    return repository, False


def _disable_actions(github: Github, repository: Repository) -> None:
    """PyGithub has no method for this endpoint; its requester is the documented way to call one."""
    try:
        github.requester.requestJsonAndCheck("PUT", f"{repository.url}/actions/permissions", input={"enabled": False})
    except GithubException as error:
        log.warning("could not disable GitHub Actions in %s (%s); pushed workflows may run there",
                    repository.full_name, _describe(error))


def _follow_default_branch(source: Path, repository: Repository) -> None:
    """A fresh mirror's default branch is GitHub's default, not the source's; point it at the source's HEAD branch."""
    head = _git(["symbolic-ref", "--quiet", "--short", "HEAD"], cwd=source, env=_clean_env())
    branch = head.stdout.strip()
    if head.returncode != 0 or not branch or branch == repository.default_branch:
        return
    if _git(["rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"], cwd=source, env=_clean_env()).returncode:
        return  # HEAD names an unborn branch, which was not pushed
    try:
        repository.edit(default_branch=branch)
    except GithubException as error:
        log.warning("could not set the default branch of %s to %s: %s", repository.full_name, branch,
                    _describe(error))


def _describe(error: GithubException) -> str:
    message = error.data.get("message") if isinstance(error.data, dict) else error.data
    return f"{error.status} {message or error.message or ''}".strip()


def _redact(text: str, token: str) -> str:
    """Remove the token and the Basic credentials derived from it, whatever produced the text."""
    for secret in (token, base64.b64encode(f"x-access-token:{token}".encode()).decode()):
        text = text.replace(secret, "***")
    return text
