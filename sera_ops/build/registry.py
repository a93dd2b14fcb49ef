"""Read an image's labels straight from a registry (Docker Registry HTTP API v2), without pulling it.

Before building, a worker asks the registry whether the commit's tag already holds an image with the same build
fingerprint (label `sera.build`): then another worker or an earlier run built it, and it is pulled instead of rebuilt.
Loopback registries and those marked `insecure` are spoken to over plain HTTP; everything else over HTTPS, with basic
auth or the bearer-token handshake that Docker Hub–style registries ask for.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

log = logging.getLogger(__name__)

MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
])
_LIST_TYPES = ("manifest.list", "image.index")


class RegistryError(RuntimeError):
    """The registry answered with something other than 'found' or 'not found'."""


def split_reference(reference: str) -> tuple[str, str, str]:
    """`host[:port]/path/name:tag` → (host, path/name, tag)."""
    name, _, tag = reference.rpartition(":")
    if not name or "/" in tag:
        name, tag = reference, "latest"
    host, _, path = name.partition("/")
    if not path or not ("." in host or ":" in host or host == "localhost"):
        raise RegistryError(f"image reference {reference!r} names no registry host (expected host[:port]/name:tag)")
    return host, path, tag


def _scheme(host: str, insecure: bool) -> str:
    hostname = host.rsplit(":", 1)[0]
    loopback = hostname in ("localhost", "[::1]") or hostname.startswith("127.")
    return "http" if insecure or loopback else "https"


class RegistryClient:
    def __init__(self, username: str | None = None, password: str | None = None, insecure: bool = False,
                 timeout_s: float = 30.0):
        self.username, self.password, self.insecure, self.timeout_s = username, password, insecure, timeout_s
        self._token: str | None = None

    def labels(self, reference: str) -> dict[str, str] | None:
        """The image config's labels for `reference`, or None when the registry has no such tag."""
        host, path, tag = split_reference(reference)
        base = f"{_scheme(host, self.insecure)}://{host}/v2/{path}"
        manifest = self._get_json(f"{base}/manifests/{urllib.parse.quote(tag)}", MANIFEST_TYPES)
        if manifest is None:
            return None
        if any(kind in str(manifest.get("mediaType", "")) for kind in _LIST_TYPES) or "manifests" in manifest:
            entries = manifest.get("manifests") or []
            chosen = next((m for m in entries if (m.get("platform") or {}).get("architecture") in ("amd64", None)),
                          entries[0] if entries else None)
            if chosen is None:
                return None
            manifest = self._get_json(f"{base}/manifests/{chosen['digest']}", MANIFEST_TYPES)
            if manifest is None:
                return None
        digest = (manifest.get("config") or {}).get("digest")
        if not digest:
            return None
        config = self._get_json(f"{base}/blobs/{digest}", "application/json")
        return dict(((config or {}).get("config") or {}).get("Labels") or {})

    def _get_json(self, url: str, accept: str) -> dict[str, Any] | None:
        for _ in range(2):  # a second try after fetching a bearer token
            request = urllib.request.Request(url, headers={"Accept": accept, **self._auth_header()})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as error:
                if error.code == 404:
                    return None
                challenge = error.headers.get("WWW-Authenticate", "")
                if error.code == 401 and challenge.lower().startswith("bearer") and self._token is None:
                    self._token = self._bearer_token(challenge)
                    continue
                raise RegistryError(f"registry answered {error.code} for {url}: {error.reason}") from None
            except (urllib.error.URLError, OSError) as error:
                raise RegistryError(f"registry at {url} cannot be reached: {error}") from None
        raise RegistryError(f"registry refused the credentials for {url}")

    def _auth_header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else self._basic_header()

    def _basic_header(self) -> dict[str, str]:
        if not (self.username and self.password):
            return {}
        return {"Authorization": "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()}

    def _bearer_token(self, challenge: str) -> str:
        fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = fields.pop("realm", "")
        if not realm:
            raise RegistryError(f"registry asked for a bearer token without a realm: {challenge}")
        url = f"{realm}?{urllib.parse.urlencode(fields)}"
        request = urllib.request.Request(url, headers=self._basic_header())
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                data = json.loads(answer.read())
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise RegistryError(f"getting a registry token from {realm} failed: {error}") from None
        token = data.get("token") or data.get("access_token")
        if not token:
            raise RegistryError(f"the token service at {realm} returned no token")
        return str(token)
