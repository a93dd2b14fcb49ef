"""A wheelhouse on loopback: a folder of wheels and sdists served over HTTP as a pip find-links page.

Image builds resolve real dependencies from it without leaving the machine: point `images.build_env` at it
(`PIP_FIND_LINKS=<url>`, `PIP_NO_INDEX=1`) and build with `build_network: host`. Fill the folder on a machine with
network (`pip download -d DIR ...`). Run it for your own dry runs: `python -m sera_ops.testing.wheelhouse DIR`.
"""

from __future__ import annotations

import argparse
import html
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from sera_ops.testing.loopback import LoopbackServer

_SUFFIXES = (".whl", ".tar.gz", ".zip", ".tgz")


class _Handler(BaseHTTPRequestHandler):
    server_version = "sera-wheelhouse"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        folder: Path = self.server.double.folder
        name = urllib.parse.unquote(urllib.parse.urlparse(self.path).path).strip("/")
        if not name:
            links = "".join(f'<a href="{urllib.parse.quote(path.name)}">{html.escape(path.name)}</a><br>\n'
                            for path in sorted(folder.iterdir()) if path.name.endswith(_SUFFIXES))
            self._send(200, f"<!DOCTYPE html><html><body>\n{links}</body></html>\n".encode(), "text/html")
            return
        path = folder / name
        if "/" in name or not path.is_file() or not name.endswith(_SUFFIXES):
            self._send(404, b"not found\n", "text/plain")
            return
        self.server.double.served.append(name)
        self._send(200, path.read_bytes(), "application/octet-stream")

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        """Quiet: pip fetches many files."""


class Wheelhouse(LoopbackServer):
    """Serves `folder`'s distributions; `served` lists the files pip fetched (tests check resolution happened)."""

    handler = _Handler
    name = "loopback wheelhouse"

    def __init__(self, folder: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.folder = Path(folder)
        self.served: list[str] = []
        if not self.folder.is_dir():
            raise FileNotFoundError(f"wheelhouse folder {self.folder} does not exist; fill it with `pip download`")

    @property
    def url(self) -> str:
        return self.address + "/"

    def pip_env(self) -> dict[str, str]:
        """The build environment that makes pip install from this wheelhouse only."""
        return {"PIP_FIND_LINKS": self.url, "PIP_NO_INDEX": "1"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--port", type=int, default=18800)
    args = parser.parse_args()
    with Wheelhouse(args.folder, port=args.port) as wheelhouse:
        print(f"serving {args.folder} at {wheelhouse.url} (Ctrl-C stops)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
