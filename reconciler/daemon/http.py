"""The daemon's HTTP endpoints, served from threads of their own.

``GET /healthz`` (is the loop alive), ``GET /metrics`` (Prometheus), ``GET /status`` (JSON) and, with
a webhook secret, ``POST /hooks/git`` (an HMAC-signed push notification that triggers a pass). The
handlers only read (through callables that return copies) or enqueue a trigger. Requests are not
logged (``/metrics`` is scraped every few seconds); a refused webhook is, with the caller's address.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_LATEST

NOT_FOUND = b'{"error": "not found"}\n'

log = logging.getLogger("virt_reconcile.daemon.http")


@dataclass(frozen=True)
class Endpoints:
    """What the endpoints answer with; each callable is safe to call from any thread."""

    alive: Callable[[], bool]
    metrics: Callable[[], bytes]
    status: Callable[[], dict[str, Any]]
    on_webhook: Callable[[], None]
    webhook_secret: bytes | None = None  # None: no webhook (404)


def signature_ok(secret: bytes, body: bytes, signature: str) -> bool:
    """Whether ``signature`` is GitHub's ``X-Hub-Signature-256`` of ``body`` under ``secret``."""
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(signature.encode(), expected.encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], endpoints: Endpoints) -> None:
        self.endpoints = endpoints
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server_version = "virt-reconcile"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged: /metrics is scraped every few seconds."""

    def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        endpoints = self.server.endpoints
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            alive = endpoints.alive()
            self._send(200 if alive else 503, b"ok\n" if alive else b"stopped\n", "text/plain")
        elif path == "/metrics":
            self._send(200, endpoints.metrics(), CONTENT_TYPE_LATEST)
        elif path == "/status":
            self._send(200, json.dumps(endpoints.status(), indent=2).encode() + b"\n")
        else:
            self._send(404, NOT_FOUND)

    def do_POST(self) -> None:
        endpoints = self.server.endpoints
        if self.path.split("?", 1)[0] != "/hooks/git" or endpoints.webhook_secret is None:
            self._send(404, NOT_FOUND)
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if not signature_ok(endpoints.webhook_secret, body, self.headers.get("X-Hub-Signature-256", "")):
            log.warning("webhook refused: bad signature (from %s)", self.client_address[0])
            self._send(401, b'{"error": "bad signature"}\n')
            return
        endpoints.on_webhook()
        self._send(202, b'{"accepted": true}\n')


class HttpEndpoints:
    """The HTTP server, serving from a thread of its own until :meth:`close`."""

    def __init__(self, listen: tuple[str, int], endpoints: Endpoints) -> None:
        self._server = _Server(listen, endpoints)
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        """Where the endpoints listen (the real port when 0 was asked for)."""
        host, port = self._server.server_address[:2]
        return (host.decode() if isinstance(host, bytes) else str(host)), int(port)

    @property
    def url(self) -> str:
        """``http://HOST:PORT``."""
        host, port = self.address
        return f"http://{host}:{port}"

    def close(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
