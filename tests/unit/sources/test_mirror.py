"""Stage 1, mirroring: real PyGithub and real git against the local GitHub double over loopback."""
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
from pydantic import ValidationError

from sera_ops.sources import mirror
from sera_ops.sources.mirror import MirrorError, MirrorSettings, authenticated_git_env, mirror_repository, push_mirror
from sera_ops.testing.local_github import LocalGitHub

TOKEN = "ghp_localDoubleToken0123456789abcdef"
GIT_ENV = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
           "PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def git(*args: str, cwd: Path, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, capture_output=True,
                          text=True, check=check, env=env or GIT_ENV)


def refs(repo: Path) -> dict[str, str]:
    """Ref name -> the commit it points at (tags peeled)."""
    out = git("for-each-ref", "--format=%(refname) %(objectname) %(*objectname)", cwd=repo).stdout
    return {name: peeled or sha for name, sha, *rest in (line.split(" ") for line in out.splitlines())
            for peeled in [rest[0] if rest else ""]}


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, list[str]]:
    """A working copy on branch `trunk` with two commits, an annotated tag on the first and a side branch."""
    repo = tmp_path / "source"
    repo.mkdir()
    git("-c", "init.defaultBranch=trunk", "init", "-q", cwd=repo)
    shas = []
    for i in range(2):
        (repo / "lib.py").write_text(f"VALUE = {i}\n")
        git("add", ".", cwd=repo)
        git("commit", "-qm", f"commit {i}", cwd=repo)
        shas.append(git("rev-parse", "HEAD", cwd=repo).stdout.strip())
    git("tag", "-a", "v0.1", "-m", "first", shas[0], cwd=repo)
    git("branch", "side", shas[0], cwd=repo)
    return repo, shas


@pytest.fixture(autouse=True)
def unthrottled_client(monkeypatch):
    """PyGithub spaces requests 0.25 s apart (writes 1 s) to spare GitHub; the double needs no such courtesy."""
    monkeypatch.setattr(mirror, "Github", functools.partial(mirror.Github, seconds_between_requests=None,
                                                            seconds_between_writes=None))


@pytest.fixture
def github(tmp_path: Path):
    with LocalGitHub(tmp_path / "github", ["acme"], TOKEN) as double:
        yield double


def settings_for(github: LocalGitHub, **overrides) -> MirrorSettings:
    return MirrorSettings(api_url=github.url, organisation="acme", **overrides)


def test_mirror_creates_a_private_repository_with_all_refs(source, github, tmp_path):
    repo, shas = source
    result = mirror_repository(repo, "sample", settings_for(github, name_prefix="sera-"), TOKEN, shas)

    assert (result.full_name, result.created, result.private) == ("acme/sera-sample", True, True)
    assert result.clone_url == f"{github.url}/acme/sera-sample.git"
    assert result.to_dict()["pushed"] == result.pushed
    expected = {"refs/heads/trunk": shas[1], "refs/heads/side": shas[0], "refs/tags/v0.1": shas[0],
                **{f"refs/sera/commits/{sha}": sha for sha in shas}}
    assert refs(github.repo_path("acme", "sera-sample")) == expected
    assert sorted(result.pushed) == sorted(expected)
    metadata = github.repository_metadata("acme", "sera-sample")
    assert metadata["private"] is True and metadata["actions_enabled"] is False
    assert (github.repo_path("acme", "sera-sample") / "HEAD").read_text().strip() == "ref: refs/heads/trunk"
    assert ("PATCH", "/repos/acme/sera-sample", 200) in github.requests

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", result.clone_url, str(clone)], check=True, capture_output=True,
                   env=authenticated_git_env(result.clone_url, TOKEN))
    assert git("log", "--format=%H", cwd=clone).stdout.split() == shas[::-1]
    assert git("tag", cwd=clone).stdout.split() == ["v0.1"]
    subprocess.run(["git", "fetch", "-q", "origin", f"refs/sera/commits/{shas[0]}"], cwd=clone, check=True,
                   capture_output=True, env=authenticated_git_env(result.clone_url, TOKEN))


def test_second_mirror_pushes_nothing_and_keeps_earlier_commit_refs(source, github):
    repo, shas = source
    settings = settings_for(github)
    mirror_repository(repo, "sample", settings, TOKEN, shas)
    again = mirror_repository(repo, "sample", settings, TOKEN, shas)
    assert (again.created, again.pushed) == (False, [])
    assert [r.path for r in github.requests if r.method == "POST" and r.path.startswith("/orgs/")] == [
        "/orgs/acme/repos"]

    (repo / "lib.py").write_text("VALUE = 2\n")
    git("commit", "-qam", "commit 2", cwd=repo)
    newest = git("rev-parse", "HEAD", cwd=repo).stdout.strip()
    third = mirror_repository(repo, "sample", settings, TOKEN, [newest])
    assert sorted(third.pushed) == ["refs/heads/trunk", f"refs/sera/commits/{newest}"]
    remote = refs(github.repo_path("acme", "sample"))
    assert {f"refs/sera/commits/{sha}" for sha in [*shas, newest]} <= set(remote)


def test_public_setting_creates_a_public_repository_readable_without_auth(source, github, tmp_path):
    repo, shas = source
    public = mirror_repository(repo, "open", settings_for(github, private=False), TOKEN, shas)
    private = mirror_repository(repo, "closed", settings_for(github), TOKEN, shas)
    assert (public.private, private.private) == (False, True)
    anonymous = subprocess.run(["git", "ls-remote", public.clone_url], capture_output=True, text=True, env=GIT_ENV)
    assert anonymous.returncode == 0 and "refs/heads/trunk" in anonymous.stdout
    refused = subprocess.run(["git", "ls-remote", private.clone_url], capture_output=True, text=True, env=GIT_ENV)
    assert refused.returncode != 0


def test_existing_repository_keeps_its_visibility(source, github, caplog):
    repo, shas = source
    mirror_repository(repo, "sample", settings_for(github, private=False), TOKEN, shas)
    with caplog.at_level(logging.WARNING, logger="sera_ops.sources.mirror"):
        result = mirror_repository(repo, "sample", settings_for(github, private=True), TOKEN, shas)
    assert result.private is False and result.created is False
    assert "visibility is left unchanged" in caplog.text
    assert github.repository_metadata("acme", "sample")["private"] is False


def test_unknown_organisation_is_named_in_the_error(source, github):
    repo, shas = source
    settings = MirrorSettings(api_url=github.url, organisation="nobody")
    with pytest.raises(MirrorError, match="organisation 'nobody' was not found"):
        mirror_repository(repo, "sample", settings, TOKEN, shas)


def test_unreachable_api_is_reported(source, tmp_path):
    repo, shas = source
    with LocalGitHub(tmp_path / "gone", ["acme"], TOKEN) as double:
        url = double.url
    with pytest.raises(MirrorError, match=f"cannot reach the GitHub API at {url}"):
        mirror_repository(repo, "sample", MirrorSettings(api_url=url, organisation="acme"), TOKEN, shas)


def test_wrong_token_is_reported_without_the_token(source, github):
    repo, shas = source
    wrong = "ghp_wrongTokenThatMustNotLeak42"
    with pytest.raises(MirrorError, match="rejected the token") as caught:
        mirror_repository(repo, "sample", settings_for(github), wrong, shas)
    assert wrong not in str(caught.value)
    assert not github.repo_path("acme", "sample").exists()


def test_git_failures_never_show_the_token(source, github):
    repo, shas = source
    mirror_repository(repo, "sample", settings_for(github), TOKEN, shas[:1])
    hook = github.repo_path("acme", "sample") / "hooks" / "pre-receive"
    hook.write_text(f"#!/bin/sh\necho 'rejected, token {TOKEN} is not welcome' >&2\nexit 1\n")
    hook.chmod(0o755)
    with pytest.raises(MirrorError, match="pre-receive hook declined") as caught:
        mirror_repository(repo, "sample", settings_for(github), TOKEN, shas)
    assert TOKEN not in str(caught.value) and "token *** is not welcome" in str(caught.value)

    wrong = "ghp_wrongTokenForGitOnly77"
    with pytest.raises(MirrorError, match="refused the token") as caught:
        push_mirror(repo, f"{github.url}/acme/sample.git", wrong, shas)
    assert wrong not in str(caught.value)


def test_token_never_reaches_argv_or_urls(source, github, monkeypatch):
    repo, shas = source
    calls = []
    real_run = subprocess.run

    def recording_run(args, **kwargs):
        calls.append(list(args))
        return real_run(args, **kwargs)

    monkeypatch.setattr(mirror.subprocess, "run", recording_run)
    mirror_repository(repo, "sample", settings_for(github), TOKEN, shas)
    assert any("push" in call for call in calls)
    encoded = mirror.authenticated_git_env("x", TOKEN)["GIT_CONFIG_VALUE_0"].split()[-1]
    assert not [arg for call in calls for arg in call if TOKEN in arg or encoded in arg]


def test_unknown_commit_or_source_fails_before_touching_github(source, github, tmp_path):
    repo, _ = source
    with pytest.raises(MirrorError, match="commit 'deadbeef' is not in"):
        mirror_repository(repo, "sample", settings_for(github), TOKEN, ["deadbeef"])
    (tmp_path / "plain").mkdir()
    with pytest.raises(MirrorError, match="is not a git repository"):
        mirror_repository(tmp_path / "plain", "sample", settings_for(github), TOKEN, [])
    assert github.requests == []


def test_bare_source_is_mirrored(source, github, tmp_path):
    repo, shas = source
    bare = tmp_path / "bare.git"
    git("clone", "-q", "--bare", str(repo), str(bare), cwd=tmp_path)
    result = mirror_repository(bare, "from-bare", settings_for(github), TOKEN, shas)
    assert refs(github.repo_path("acme", "from-bare"))["refs/heads/trunk"] == shas[1]
    assert result.created


def test_rest_api_requires_the_token(github):
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{github.url}/orgs/acme")
    assert caught.value.code == 401
    assert json.loads(caught.value.read())["message"] == "Bad credentials"
    for scheme in ("token", "Bearer"):
        request = urllib.request.Request(f"{github.url}/orgs/acme", headers={"Authorization": f"{scheme} {TOKEN}"})
        assert json.loads(urllib.request.urlopen(request).read())["login"] == "acme"


def test_git_push_without_auth_is_rejected(source, github):
    repo, shas = source
    result = mirror_repository(repo, "sample", settings_for(github), TOKEN, shas[:1])
    git("branch", "intruder", cwd=repo)
    push = git("push", result.clone_url, "refs/heads/intruder", cwd=repo, check=False)
    assert push.returncode != 0
    assert "refs/heads/intruder" not in refs(github.repo_path("acme", "sample"))
    assert any(r.status == 401 and "git-receive-pack" in r.path for r in github.requests)
    challenge = urllib.request.Request(f"{result.clone_url}/info/refs?service=git-receive-pack")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(challenge)
    assert caught.value.code == 401 and caught.value.headers["WWW-Authenticate"].startswith("Basic realm=")


def test_settings_are_validated():
    with pytest.raises(ValidationError):
        MirrorSettings(organisation="acme", unknown=1)
    with pytest.raises(ValidationError, match="organisation login"):
        MirrorSettings(organisation="not an org")
    with pytest.raises(ValidationError, match="http"):
        MirrorSettings(organisation="acme", api_url="github.com")
    assert MirrorSettings(organisation="acme").private is True


def test_missing_token_names_where_it_looked(monkeypatch):
    monkeypatch.delenv("SERA_TEST_MISSING_TOKEN", raising=False)
    settings = MirrorSettings(organisation="acme", token={"env": "SERA_TEST_MISSING_TOKEN"})
    with pytest.raises(MirrorError, match="SERA_TEST_MISSING_TOKEN"):
        mirror.resolve_token(settings)
    monkeypatch.setenv("SERA_TEST_MISSING_TOKEN", TOKEN)
    assert mirror.resolve_token(settings) == TOKEN


def test_command_line_serves_until_terminated(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "sera_ops.testing.local_github", "--root", str(tmp_path / "gh"), "--org", "acme",
         "--port", "0", "--token-env", "DOUBLE_TOKEN"],
        stdout=subprocess.PIPE, text=True, env=os.environ | {"DOUBLE_TOKEN": TOKEN})
    try:
        url = process.stdout.readline().strip()
        request = urllib.request.Request(f"{url}/orgs/acme", headers={"Authorization": f"token {TOKEN}"})
        assert json.loads(urllib.request.urlopen(request, timeout=5).read())["login"] == "acme"
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
