"""A real HTTP receiver on 127.0.0.1 for the daemon's notifications: it records every POST, and can
answer with an error for the first N requests, always answer one status, or hang until released."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict:
        return json.loads(self.body)


class LocalReceiver:
    """``http.server`` in a thread. ``fail_first`` requests get 500, then ``status`` (200); with
    ``hang``, every request waits until :meth:`release` (or the end) before it is answered."""

    def __init__(
        self, *, fail_first: int = 0, status: int = 200, hang: bool = False, location: str = ""
    ) -> None:
        self.fail_first = fail_first
        self.status = status
        self.location = location  # with a 3xx status: where it points
        self.hang = hang
        self.released = threading.Event()
        self.requests: list[Received] = []
        self._arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._arrived:
                    receiver.requests.append(Received(self.path, dict(self.headers.items()), body))
                    number = len(receiver.requests)
                    receiver._arrived.notify_all()
                if receiver.hang:
                    receiver.released.wait(60)
                status = 500 if number <= receiver.fail_first else receiver.status
                self.send_response(status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                answer = b'{"message": "Bad credentials"}' if status == 401 else b"ok"
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                pass  # the test reads self.requests instead

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="receiver", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def wait_for(self, count: int, timeout: float = 30) -> list[Received]:
        """The requests once there are ``count`` of them (failing after ``timeout`` seconds)."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"{len(self.requests)} request(s), not {count}: {self.requests}")
            return list(self.requests)

    def events(self) -> list[str]:
        return [request.json["event"] for request in self.requests]

    def release(self) -> None:
        """Answer the hanging requests (and every later one at once)."""
        self.hang = False
        self.released.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


def absent_url() -> str:
    """A loopback URL nobody listens on: a port bound, then let go."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def receivers() -> Iterator[Callable[..., LocalReceiver]]:
    """Start local receivers as a test asks (``receivers(fail=2)``); all closed after it."""
    started: list[LocalReceiver] = []

    def start(**behaviour: object) -> LocalReceiver:
        started.append(LocalReceiver(**behaviour))  # type: ignore[arg-type]
        return started[-1]

    yield start
    for receiver in started:
        receiver.close()
