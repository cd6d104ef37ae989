"""The daemon as a real process under a bounded load on loopback: 500 slow clients (slowloris, one
byte a second) and a 50 MiB webhook body. Meanwhile ``/healthz`` answers within a second every time,
and the daemon's threads and resident memory (read from ``/proc``) stay flat. The load stops by
itself after :data:`LOAD_SECONDS`."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.daemon_helpers import DaemonProcess, rss_kib, thread_count

SECRET = b"s3cret"
SLOW_CLIENTS = 500
LOAD_SECONDS = 12  # past the daemon's 10 s request timeout
BIG_BODY = 50 << 20
SLOW_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris\r\n\r\n"
HOST = (
    "apiVersion: virt-reconcile/v1\nkind: Host\nmetadata: {name: hv1}\n"
    "spec:\n  uri: sandbox:state/hv1.xml\n  capacity: {cpus: 8, memory: 16GiB}\n"
)


class Slowloris:
    """``count`` connections, each sending its request one byte per :meth:`tick`; one the server
    closed is opened again at the next tick (at most once a tick, so the load stays bounded)."""

    def __init__(self, address: tuple[str, int], count: int) -> None:
        self.address = address
        self.slots = [self._open() for _ in range(count)]
        self.reopened = 0

    def _open(self) -> tuple[socket.socket, int]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(self.address)  # in progress: a send before it completes is simply skipped
        return sock, 0

    def tick(self) -> None:
        for index, slot in enumerate(self.slots):
            if self._closed(slot[0]):
                slot[0].close()
                self.slots[index] = self._open()
                self.reopened += 1
                continue
            sock, sent = slot
            with contextlib.suppress(OSError):
                sock.send(SLOW_REQUEST[sent % len(SLOW_REQUEST) : sent % len(SLOW_REQUEST) + 1])
                self.slots[index] = (sock, sent + 1)

    @staticmethod
    def _closed(sock: socket.socket) -> bool:
        """Whether the server answered or closed this connection."""
        try:
            sock.recv(4096)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return True

    def close(self) -> None:
        for sock, _sent in self.slots:
            sock.close()


def big_body(address: tuple[str, int], outcome: dict[str, bytes | int]) -> None:
    """POST a 50 MiB webhook body as fast as the server takes it; record what was sent and heard."""
    head = (
        "POST /hooks/git HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Length: {BIG_BODY}\r\nX-Hub-Signature-256: sha256={'0' * 64}\r\n\r\n"
    ).encode()
    chunk, sent, response = b"x" * (1 << 16), 0, b""
    with socket.create_connection(address, timeout=5) as sock:
        try:
            sock.sendall(head)
            while sent < BIG_BODY:
                sent += sock.send(chunk)
        except OSError:
            pass  # refused and closed: the rest was never taken
        with contextlib.suppress(OSError):
            response = sock.recv(4096)
    outcome.update(sent=sent, response=response)


def healthz_seconds(url: str) -> float:
    started = time.monotonic()
    with urllib.request.urlopen(url + "/healthz", timeout=5) as response:
        assert response.status == 200 and response.read() == b"ok\n"
    return time.monotonic() - started


@pytest.fixture
def daemon(tmp_path: Path):
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "hosts.yaml").write_text(HOST)
    process = DaemonProcess(
        "--source", str(folder), "--interval", "1h", secret=SECRET, state_dir=tmp_path / "state"
    )
    process.start()
    yield process
    process.stop()


def test_slow_clients_and_a_huge_body_neither_starve_healthz_nor_grow_the_daemon(daemon):
    assert daemon.proc is not None
    pid = daemon.proc.pid
    deadline = time.monotonic() + 20
    while not daemon.status()["reconciledRevision"]:  # the first pass is over: the daemon is warm
        assert time.monotonic() < deadline, daemon.log[-5:]
        time.sleep(0.1)
    for path in ("/status", "/metrics", "/healthz"):
        assert daemon.get(path)[0] == 200
    threads, rss = thread_count(pid), rss_kib(pid)
    host, port = daemon.url.removeprefix("http://").split(":")
    address = (host, int(port))

    outcome: dict[str, bytes | int] = {}
    sender = threading.Thread(target=big_body, args=(address, outcome), daemon=True)
    sender.start()
    slow = Slowloris(address, SLOW_CLIENTS)
    latencies: list[float] = []
    most_threads = threads
    try:
        ends = time.monotonic() + LOAD_SECONDS
        while (now := time.monotonic()) < ends:
            slow.tick()
            latencies.append(healthz_seconds(daemon.url))
            most_threads = max(most_threads, thread_count(pid))
            time.sleep(max(0.0, now + 1.0 - time.monotonic()))
    finally:
        slow.close()
    sender.join(10)
    time.sleep(0.5)  # the daemon sees every connection close

    assert len(latencies) >= 10 and max(latencies) < 1.0, latencies
    assert most_threads <= threads + 2, (threads, most_threads)
    growth_mib = (rss_kib(pid) - rss) / 1024
    assert growth_mib < 50, f"RSS grew by {growth_mib:.1f} MiB"
    assert slow.reopened > SLOW_CLIENTS  # the server closed slow clients to make room
    sent, response = outcome["sent"], outcome["response"]
    assert isinstance(sent, int) and sent < BIG_BODY, "the 50 MiB body was taken"
    assert isinstance(response, bytes) and (response == b"" or response.startswith(b"HTTP/1.1 413 "))
    assert daemon.get("/healthz") == (200, b"ok\n")
    assert any("413 body larger than" in line for line in daemon.log)
    assert any("still sending its request" in line for line in daemon.log)
