"""The plumbing the HTTP doubles share: a threaded HTTP server on loopback, served from a daemon thread."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


class LoopbackHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    double: Any  # the LoopbackServer that answers; handlers reach it as self.server.double


class LoopbackServer:
    """Start/stop, context manager and bound address of an HTTP double; subclasses set `handler` and `name`."""

    handler: type[BaseHTTPRequestHandler]
    name = "loopback server"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self._server: LoopbackHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _before_start(self) -> None:
        """Hook: prepare state before the socket is bound."""

    def _before_stop(self) -> None:
        """Hook: release requests that are waiting, before the server shuts down."""

    def start(self) -> str:
        """Bind and serve in a background thread; returns `url`."""
        if self._server is not None:
            raise RuntimeError(f"the {self.name} is already running")
        self._before_start()
        self._server = LoopbackHTTPServer((self.host, self.port), self.handler)
        self._server.double = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=self.name, daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is None:
            return
        self._before_stop()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> LoopbackServer:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
                 ) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """http://host:port of the bound socket."""
        if self._server is None:
            raise RuntimeError(f"the {self.name} is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        return self.address
