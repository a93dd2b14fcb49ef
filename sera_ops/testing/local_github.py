"""A local GitHub double: the slice of GitHub's REST API that mirroring and issue scraping use, plus git smart-HTTP.

It exists because nothing GitHub-like can be installed here (no gitea or forgejo packages, and the npm simulators
return canned examples without git transport), and mirroring must still be tested against a real client (PyGithub)
and real `git push`. It is not GitHub: it serves only the routes the mirror flow and the demonstration-issue scraper
call, keeps repositories as bare git repositories under `<root>/<org>/<name>.git`, knows one token and the
organisations it was started with, and rejects names GitHub would silently rewrite. Issues are seeded (`seed_issues`,
`--issues FILE`) for any owner/name and listed as GitHub lists them: pull requests included, paginated with `Link`
headers. Where it does answer, it answers the way GitHub does: the same status codes, error bodies and headers, token
auth on REST (`token` or `Bearer`), Basic auth with the token as password on git, anonymous reads allowed only for
public repositories, and Actions enabled on new repositories. Git transport is git's own `git-http-backend`, run as
CGI, so pushes and clones behave exactly as against a real git server.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
import zlib
from collections.abc import Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from sera_ops.testing.loopback import LoopbackHTTPServer, LoopbackServer

log = logging.getLogger(__name__)

GIT_HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"
METADATA_FILE = "local-github.json"
"""Per-repository state GitHub keeps outside git (visibility, settings), stored inside the bare repository."""

NAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
DOCS_URL = "https://docs.github.com/rest"
_GIT_PATH = re.compile(r"^/(?P<org>[^/]+)/(?P<name>[^/]+)\.git(?P<rest>/.*)$")
_REPO_PATH = re.compile(r"^/repos/(?P<org>[^/]+)/(?P<name>[^/]+?)(?P<rest>/actions/permissions)?/?$")
_ORG_PATH = re.compile(r"^/orgs/(?P<org>[^/]+)(?P<rest>/repos)?/?$")
_ISSUES_PATH = re.compile(r"^/repos/(?P<owner>[^/]+)/(?P<name>[^/]+)/issues/?$")
FULL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$")
ISSUE_STATES = ("open", "closed", "all")
MAX_PER_PAGE = 100
_PUSH_SERVICE = "git-receive-pack"


class RecordedRequest(NamedTuple):
    """One answered request (path as sent, query included), for assertions in tests.

    For example `("POST", "/orgs/acme/repos", 201) in github.requests`.
    """

    method: str
    path: str
    status: int


def _git(*args: str, cwd: Path) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=_git_env())
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: {result.stderr.strip()}")
    return result.stdout


def _git_env(**extra: str) -> dict[str, str]:
    """A minimal environment for the double's own git processes: no user config, no inherited secrets."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0", **extra}


class _Handler(BaseHTTPRequestHandler):
    server: LoopbackHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "local-github-double"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self._send_json(HTTPStatus.BAD_REQUEST, {"message": "Problems parsing request body"})
            return
        path, query = urlsplit(self.path)[2:4]
        git_match = _GIT_PATH.match(path)
        if git_match:
            self._serve_git(git_match["org"], git_match["name"], git_match["rest"], body)
        else:
            self._serve_rest(path, query, body)

    def _read_body(self) -> bytes:
        """The request body, de-chunked: git sends large packs with `Transfer-Encoding: chunked`."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    # REST ------------------------------------------------------------------------------------------------------------

    def _serve_rest(self, path: str, query: str, body: bytes) -> None:
        github = self.server.double
        if not github.token_matches(_rest_token(self.headers.get("Authorization", ""))):
            self._send_json(HTTPStatus.UNAUTHORIZED, {"message": "Bad credentials", "documentation_url": DOCS_URL,
                                                      "status": "401"})
            return
        issues_match = _ISSUES_PATH.match(path)
        if issues_match and self.command == "GET":
            self._send_json(*github.list_issues(unquote(issues_match["owner"]), unquote(issues_match["name"]),
                                                parse_qs(query)))
            return
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            self._send_json(HTTPStatus.BAD_REQUEST, {"message": "Problems parsing JSON", "status": "400"})
            return
        status, answer = github.answer_rest(self.command, path, payload if isinstance(payload, dict) else {})
        self._send_json(status, answer)

    def _send_json(self, status: HTTPStatus, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if payload is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-GitHub-Media-Type", "github.v3; format=json")
        self.send_header("X-GitHub-Api-Version-Selected", "2022-11-28")
        self.send_header("X-RateLimit-Limit", "5000")
        self.send_header("X-RateLimit-Remaining", "4999")
        self.send_header("X-RateLimit-Reset", str(int(time.time()) + 3600))
        self.send_header("X-RateLimit-Used", "1")
        self.send_header("X-RateLimit-Resource", "core")
        if status == HTTPStatus.CREATED and isinstance(payload, dict) and "url" in payload:
            self.send_header("Location", payload["url"])
        self.end_headers()
        self.server.double.record(self.command, self.path, status)  # before the client can read the answer
        self.wfile.write(data)

    # git smart-HTTP --------------------------------------------------------------------------------------------------

    def _serve_git(self, org: str, name: str, rest: str, body: bytes) -> None:
        github = self.server.double
        query = urlsplit(self.path).query
        pushing = rest.endswith("/" + _PUSH_SERVICE) or f"service={_PUSH_SERVICE}" in query
        user, password = _basic_credentials(self.headers.get("Authorization", ""))
        authenticated = password is not None and github.token_matches(password)
        metadata = github.repository_metadata(org, name)
        public_read = metadata is not None and not metadata["private"] and not pushing and password is None
        if not authenticated and not public_read:
            self._send_plain(HTTPStatus.UNAUTHORIZED, "Invalid username or token.\n",
                             {"WWW-Authenticate": 'Basic realm="local GitHub double"'})
            return
        if metadata is None:
            self._send_plain(HTTPStatus.NOT_FOUND, "Repository not found.\n")
            return
        env = _git_env(
            GIT_PROJECT_ROOT=str(github.root), GIT_HTTP_EXPORT_ALL="1",
            GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="http.receivepack", GIT_CONFIG_VALUE_0="true",
            PATH_INFO=f"/{org}/{name}.git{rest}", REQUEST_METHOD=self.command, QUERY_STRING=query,
            CONTENT_TYPE=self.headers.get("Content-Type", ""), CONTENT_LENGTH=str(len(body)),
            REMOTE_ADDR=self.client_address[0], REMOTE_USER=user or "anonymous")
        for header, variable in (("Content-Encoding", "HTTP_CONTENT_ENCODING"), ("Git-Protocol", "GIT_PROTOCOL")):
            if self.headers.get(header):
                env[variable] = self.headers[header]
        result = subprocess.run([GIT_HTTP_BACKEND], input=body, capture_output=True, env=env)
        if result.returncode != 0 and not result.stdout:
            log.warning("git-http-backend failed for %s: %s", rest, result.stderr.decode(errors="replace").strip())
            self._send_plain(HTTPStatus.INTERNAL_SERVER_ERROR, "git-http-backend failed\n")
            return
        self._send_cgi_output(result.stdout)

    def _send_cgi_output(self, output: bytes) -> None:
        ends = [(index, len(marker)) for marker in (b"\r\n\r\n", b"\n\n") if (index := output.find(marker)) >= 0]
        end, width = min(ends) if ends else (len(output), 0)
        head, content = output[:end], output[end + width:]
        status, headers = HTTPStatus.OK, {}
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = HTTPStatus(int(value.split()[0]))
            elif key:
                headers[key.strip()] = value.strip()
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.server.double.record(self.command, self.path, status)  # before the client can read the answer
        self.wfile.write(content)

    def _send_plain(self, status: HTTPStatus, text: str, headers: dict[str, str] | None = None) -> None:
        data = text.encode()
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.server.double.record(self.command, self.path, status)  # before the client can read the answer
        self.wfile.write(data)


def _rest_token(authorization: str) -> str | None:
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() in ("token", "bearer") and value.strip() else None


def _basic_credentials(authorization: str) -> tuple[str | None, str | None]:
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        user, separator, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None, None
    return (user, password) if separator else (None, None)


def _not_found() -> tuple[HTTPStatus, dict]:
    return HTTPStatus.NOT_FOUND, {"message": "Not Found", "documentation_url": DOCS_URL, "status": "404"}


def _unprocessable(message: str, field: str = "name", resource: str = "Repository") -> tuple[HTTPStatus, dict]:
    return HTTPStatus.UNPROCESSABLE_ENTITY, {
        "message": "Repository creation failed." if resource == "Repository" else "Validation Failed",
        "errors": [{"resource": resource, "code": "custom", "field": field, "message": message}],
        "documentation_url": DOCS_URL, "status": "422"}


def _int_param(query: dict[str, list[str]], key: str, default: int) -> int:
    try:
        return int(query[key][-1])
    except (KeyError, ValueError):
        return default


def _timestamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class LocalGitHub(LoopbackServer):
    """A local GitHub double on loopback; use as a context manager or start()/stop(). State lives under `root`."""

    handler = _Handler
    name = "local GitHub double"

    def __init__(self, root: Path, organisations: Iterable[str], token: str, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        if not token:
            raise ValueError("the local GitHub double needs a non-empty token")
        self.root = Path(root).resolve()
        self.organisations = tuple(organisations)
        for org in self.organisations:
            if not NAME_PATTERN.match(org):
                raise ValueError(f"organisation name {org!r} is not a valid GitHub login")
        super().__init__(host, port)
        self._token = token
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._issues: dict[str, list[dict[str, Any]]] = {}

    def __repr__(self) -> str:
        return f"LocalGitHub(root={str(self.root)!r}, organisations={self.organisations!r})"

    def _before_start(self) -> None:
        for org in self.organisations:
            (self.root / org).mkdir(parents=True, exist_ok=True)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every answered request so far, in order."""
        with self._lock:
            return list(self._requests)

    def record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._requests.append(RecordedRequest(method, path, int(status)))

    def token_matches(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), self._token.encode())

    def repo_path(self, org: str, name: str) -> Path:
        """Where the bare repository `<org>/<name>` lives (whether or not it exists yet)."""
        return self.root / org / f"{name}.git"

    def repository_metadata(self, org: str, name: str) -> dict[str, Any] | None:
        """The stored state of an existing repository of a configured organisation, or None."""
        if org not in self.organisations or not NAME_PATTERN.match(name):
            return None
        try:
            return json.loads((self.repo_path(org, name) / METADATA_FILE).read_text())
        except FileNotFoundError:
            return None

    def seed_issues(self, full_name: str, issues: Iterable[dict[str, Any]]) -> None:
        """Add issues (and pull requests: items with a `pull_request` key) to `owner/name`, which need not be hosted.

        Each item is a GitHub issue object; `title` is required, `number` defaults to the next free one, `state` to
        open, and `labels` may be names. The rest (urls, ids, user) is filled in when the issues are listed.
        """
        if not FULL_NAME_PATTERN.match(full_name):
            raise ValueError(f"{full_name!r} is not a GitHub repository name (owner/name)")
        with self._lock:
            stored = self._issues.setdefault(full_name, [])
            for issue in issues:
                if not isinstance(issue, dict) or not isinstance(issue.get("title"), str) \
                        or not isinstance(issue.get("number", 0), int):
                    raise ValueError(f"an issue of {full_name} needs a 'title' (and an integer 'number' if given): "
                                     f"{issue!r}")
                number = issue.get("number", max((known["number"] for known in stored), default=0) + 1)
                if any(known["number"] == number for known in stored):
                    raise ValueError(f"{full_name} already has an issue #{number}")
                labels = [label if isinstance(label, dict) else {"name": label} for label in issue.get("labels", [])]
                stored.append({"state": "open", **issue, "number": number, "labels": labels})

    def list_issues(self, owner: str, name: str, query: dict[str, list[str]]
                    ) -> tuple[HTTPStatus, Any, dict[str, str]]:
        """GET /repos/{owner}/{name}/issues: `state` (open), `labels` (all of them), `direction` (desc; the order
        is by number, i.e. creation), `per_page` (30, at most 100) and `page`, with GitHub's `Link` header."""
        full_name = f"{owner}/{name}"
        with self._lock:
            seeded = list(self._issues.get(full_name, []))
        if not seeded and self.repository_metadata(owner, name) is None:
            return (*_not_found(), {})
        state = query.get("state", ["open"])[-1]
        if state not in ISSUE_STATES:
            return (*_unprocessable(f"state must be one of {', '.join(ISSUE_STATES)}", field="state",
                                    resource="Issue"), {})
        wanted = {label for value in query.get("labels", []) for label in value.split(",") if label}
        chosen = [issue for issue in seeded if state in ("all", issue["state"])
                  and wanted <= {label["name"] for label in issue["labels"]}]
        chosen.sort(key=lambda issue: issue["number"], reverse=query.get("direction", ["desc"])[-1] != "asc")
        per_page = min(max(_int_param(query, "per_page", 30), 1), MAX_PER_PAGE)
        page = max(_int_param(query, "page", 1), 1)
        last = max(-(-len(chosen) // per_page), 1)
        body = [self._issue_json(full_name, issue) for issue in chosen[(page - 1) * per_page:page * per_page]]
        return HTTPStatus.OK, body, self._link_header(f"/repos/{full_name}/issues", query, page, last)

    def _issue_json(self, full_name: str, issue: dict[str, Any]) -> dict[str, Any]:
        number = issue["number"]
        api, html = f"{self.url}/repos/{full_name}/issues/{number}", f"{self.url}/{full_name}/issues/{number}"
        return {"id": zlib.crc32(f"{full_name}#{number}".encode()), "node_id": f"I_{full_name}#{number}",
                "url": api, "html_url": html, "comments_url": f"{api}/comments", "body": None, "comments": 0,
                "user": {"login": "octocat", "id": 1, "type": "User"}, "locked": False, "assignees": [],
                "created_at": _timestamp(number * 3600), "updated_at": _timestamp(number * 3600),
                "closed_at": _timestamp(number * 3600) if issue["state"] == "closed" else None,
                **issue, "labels": [{"id": zlib.crc32(label["name"].encode()), "color": "ededed", **label}
                                    for label in issue["labels"]]}

    def _link_header(self, path: str, query: dict[str, list[str]], page: int, last: int) -> dict[str, str]:
        """GitHub's pagination links (next and last, prev and first), which PyGithub's PaginatedList follows."""
        def link(number: int, rel: str) -> str:
            params = {key: values[-1] for key, values in query.items()} | {"page": str(number)}
            return f'<{self.url}{path}?{urlencode(params)}>; rel="{rel}"'

        links = ([link(page + 1, "next"), link(last, "last")] if page < last else []) + \
            ([link(page - 1, "prev"), link(1, "first")] if page > 1 else [])
        return {"Link": ", ".join(links)} if links else {}

    def answer_rest(self, method: str, path: str, payload: dict[str, Any]) -> tuple[HTTPStatus, Any]:
        """Status and JSON body for one authenticated REST request."""
        org_match, repo_match = _ORG_PATH.match(path), _REPO_PATH.match(path)
        if org_match:
            org = unquote(org_match["org"])
            if org not in self.organisations:
                return _not_found()
            if method == "GET" and not org_match["rest"]:
                return HTTPStatus.OK, self._org_json(org)
            if method == "POST" and org_match["rest"]:
                return self._create_repository(org, payload)
        elif repo_match:
            org, name = unquote(repo_match["org"]), unquote(repo_match["name"])
            metadata = self.repository_metadata(org, name)
            if metadata is None:
                return _not_found()
            if repo_match["rest"]:
                return self._actions_permissions(method, org, name, metadata, payload)
            if method == "GET":
                return HTTPStatus.OK, self._repo_json(org, name)
            if method == "PATCH":
                return self._edit_repository(org, name, payload)
        return _not_found()

    def _org_json(self, org: str) -> dict[str, Any]:
        return {"login": org, "id": zlib.crc32(org.encode()), "node_id": f"O_{org}", "url": f"{self.url}/orgs/{org}",
                "repos_url": f"{self.url}/orgs/{org}/repos", "html_url": f"{self.url}/{org}", "type": "Organization",
                "name": org, "description": "organisation of the local GitHub double"}

    def _repo_json(self, org: str, name: str) -> dict[str, Any]:
        metadata = self.repository_metadata(org, name)
        assert metadata is not None
        path = self.repo_path(org, name)
        head = (path / "HEAD").read_text().strip()
        full_name = f"{org}/{name}"
        return {
            "id": metadata["id"], "node_id": f"R_{metadata['id']}", "name": name, "full_name": full_name,
            "private": metadata["private"], "visibility": "private" if metadata["private"] else "public",
            "owner": {key: value for key, value in self._org_json(org).items() if key in ("login", "id", "url",
                                                                                       "html_url", "type")},
            "html_url": f"{self.url}/{full_name}", "description": metadata.get("description"), "fork": False,
            "url": f"{self.url}/repos/{full_name}", "clone_url": f"{self.url}/{full_name}.git",
            "default_branch": head.removeprefix("ref: refs/heads/"),
            "created_at": _timestamp(metadata["created_at"]), "updated_at": _timestamp(path.stat().st_mtime),
            "pushed_at": _timestamp((path / "refs").stat().st_mtime), "archived": False, "disabled": False,
            "has_issues": metadata["has_issues"], "has_wiki": metadata["has_wiki"],
            "has_projects": metadata["has_projects"],
            "permissions": {"admin": True, "maintain": True, "push": True, "triage": True, "pull": True}}

    def _write_metadata(self, org: str, name: str, metadata: dict[str, Any]) -> None:
        target = self.repo_path(org, name) / METADATA_FILE
        temporary = target.with_suffix(".tmp")
        temporary.write_text(json.dumps(metadata, indent=2))
        os.replace(temporary, target)

    def _create_repository(self, org: str, payload: dict[str, Any]) -> tuple[HTTPStatus, Any]:
        name = payload.get("name")
        if not isinstance(name, str) or not NAME_PATTERN.match(name) or name in (".", ".."):
            return _unprocessable("name is invalid: the local GitHub double accepts only letters, digits, '.', '-' "
                                  "and '_' (GitHub would rewrite other characters)")
        private = payload.get("private", payload.get("visibility", "public") != "public")
        with self._lock:
            if self.repo_path(org, name).exists():
                return _unprocessable("name already exists on this account")
            path = self.repo_path(org, name)
            _git("-c", "init.defaultBranch=main", "init", "--quiet", "--bare", str(path), cwd=self.root)
            self._write_metadata(org, name, {
                "id": zlib.crc32(f"{org}/{name}".encode()), "private": bool(private),
                "description": payload.get("description"), "created_at": time.time(), "actions_enabled": True,
                **{key: bool(payload.get(key, True)) for key in ("has_issues", "has_wiki", "has_projects")}})
        log.info("local GitHub double: created %s/%s (private=%s)", org, name, bool(private))
        return HTTPStatus.CREATED, self._repo_json(org, name)

    def _edit_repository(self, org: str, name: str, payload: dict[str, Any]) -> tuple[HTTPStatus, Any]:
        if payload.get("name", name) != name:
            return _unprocessable("renaming is not supported by the local GitHub double", resource="Repository")
        path = self.repo_path(org, name)
        branch = payload.get("default_branch")
        if branch is not None:
            known = _git("for-each-ref", "--format=%(refname:short)", "refs/heads/", cwd=path).split()
            if branch not in known:
                return _unprocessable(f"branch {branch!r} does not exist", field="default_branch")
            _git("symbolic-ref", "HEAD", f"refs/heads/{branch}", cwd=path)
        with self._lock:
            metadata = self.repository_metadata(org, name)
            assert metadata is not None
            if "private" in payload or "visibility" in payload:
                metadata["private"] = bool(payload.get("private", payload.get("visibility") != "public"))
            for key in ("description", "has_issues", "has_wiki", "has_projects"):
                if key in payload:
                    metadata[key] = payload[key]
            self._write_metadata(org, name, metadata)
        return HTTPStatus.OK, self._repo_json(org, name)

    def _actions_permissions(self, method: str, org: str, name: str, metadata: dict[str, Any],
                             payload: dict[str, Any]) -> tuple[HTTPStatus, Any]:
        if method == "GET":
            enabled = metadata["actions_enabled"]
            return HTTPStatus.OK, {"enabled": enabled, **({"allowed_actions": "all"} if enabled else {})}
        if method != "PUT":
            return _not_found()
        if not isinstance(payload.get("enabled"), bool):
            return _unprocessable("'enabled' must be a boolean", field="enabled", resource="Actions")
        with self._lock:
            metadata = self.repository_metadata(org, name)
            assert metadata is not None
            metadata["actions_enabled"] = payload["enabled"]
            self._write_metadata(org, name, metadata)
        return HTTPStatus.NO_CONTENT, None


def main(argv: list[str] | None = None) -> None:
    """Serve the local GitHub double until SIGTERM or SIGINT; prints the API base URL once."""
    parser = argparse.ArgumentParser(prog="python -m sera_ops.testing.local_github",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="folder for the bare repositories")
    parser.add_argument("--org", action="append", required=True, help="an organisation to serve (repeatable)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18766)
    parser.add_argument("--token-env", metavar="VAR", required=True,
                        help="environment variable holding the token clients must present")
    parser.add_argument("--issues", metavar="FILE", type=Path, action="append", default=[],
                        help='issues to serve: a JSON object {"owner/name": [issue, ...]} (repeatable)')
    args = parser.parse_args(argv)
    token = os.environ.get(args.token_env)
    if not token:
        parser.error(f"environment variable {args.token_env} is empty or not set")
    try:
        github = LocalGitHub(args.root, args.org, token, host=args.host, port=args.port)
        for issues_file in args.issues:
            seeded = json.loads(issues_file.read_text(encoding="utf-8"))
            if not isinstance(seeded, dict):
                raise ValueError(f"{issues_file}: expected a JSON object mapping owner/name to a list of issues")
            for full_name, issues in seeded.items():
                github.seed_issues(full_name, issues)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    with github:
        print(github.url, flush=True)
        done.wait()


if __name__ == "__main__":
    main()
