"""The daemon's HTTP endpoints, served in-process on a free loopback port."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from reconciler.daemon.http import Deliveries, Endpoints, HttpEndpoints, Limits
from tests.daemon_helpers import raw_request, status_code

SECRET = b"s3cret"


class Served:
    """Two servers (with and without a webhook secret) shared by this module's tests."""

    status_wait: threading.Event | None = None  # /status waits for this (a busy worker)

    def __init__(self) -> None:
        self.alive = True
        self.hooks: list[str] = []
        self.signed = HttpEndpoints(("127.0.0.1", 0), self.endpoints(SECRET))
        self.unsigned = HttpEndpoints(("127.0.0.1", 0), self.endpoints(None))

    def status(self) -> dict:
        self.status_calls = getattr(self, "status_calls", 0) + 1
        if self.status_wait is not None:
            self.status_wait.wait(10)
        return {"hosts": {}, "source": {}, "reconciledRevision": "r1"}

    def endpoints(self, secret: bytes | None) -> Endpoints:
        return Endpoints(
            alive=lambda: self.alive,
            metrics=lambda: b"virt_reconcile_x 1.0\n",
            status=self.status,
            on_webhook=lambda: self.hooks.append("webhook"),
            webhook_secret=secret,
        )


@pytest.fixture(scope="module")
def servers():
    served = Served()
    yield served
    served.signed.close()
    served.unsigned.close()


@pytest.fixture
def served(servers):
    servers.alive, servers.hooks[:] = True, []
    return servers


def request(url: str, body: bytes | None = None, signature: str = "") -> tuple[int, bytes]:
    headers = {"X-Hub-Signature-256": signature} if body is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def sign(body: bytes, secret: bytes = SECRET) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def test_get_endpoints(served):
    server = served.signed
    assert request(server.url + "/healthz") == (200, b"ok\n")
    assert request(server.url + "/metrics") == (200, b"virt_reconcile_x 1.0\n")
    code, body = request(server.url + "/status?pretty")
    assert code == 200 and json.loads(body)["reconciledRevision"] == "r1"
    assert request(server.url + "/nothing")[0] == 404


def test_healthz_fails_when_the_loop_is_not_alive(served):
    served.alive = False
    assert request(served.signed.url + "/healthz") == (503, b"stopped\n")


def test_a_signed_webhook_triggers_a_pass_and_a_badly_signed_one_does_not(served):
    server, hooks = served.signed, served.hooks
    body = b'{"ref": "refs/heads/main"}'
    assert request(server.url + "/hooks/git", body, sign(body)) == (202, b'{"accepted": true}\n')
    assert request(server.url + "/hooks/git", body, sign(body, b"other"))[0] == 401
    assert request(server.url + "/hooks/git", body, "")[0] == 401
    assert request(server.url + "/elsewhere", body, sign(body))[0] == 404
    assert hooks == ["webhook"]


def test_a_refused_webhook_is_logged_with_its_caller(served, caplog):
    body = b"{}"
    with caplog.at_level(logging.WARNING, logger="virt_reconcile.daemon.http"):
        assert request(served.signed.url + "/hooks/git", body, sign(body))[0] == 202
        assert request(served.signed.url + "/hooks/git", body, sign(body, b"other"))[0] == 401
    assert [r.getMessage() for r in caplog.records] == [
        "refused POST /hooks/git from 127.0.0.1: 401 bad signature"
    ]


def test_the_webhook_is_off_without_a_secret(served):
    server, hooks = served.unsigned, served.hooks
    body = b"{}"
    assert request(server.url + "/hooks/git", body, sign(body))[0] == 404
    assert hooks == []


# ------------------------------------------------------------------ what a hostile peer may cost


@contextmanager
def server(**limits: float) -> Iterator[tuple[HttpEndpoints, Served]]:
    """A server of its own with ``limits`` (short timeouts, few connections) and the webhook on."""
    served = Served.__new__(Served)
    served.alive, served.hooks = True, []
    endpoints = HttpEndpoints(("127.0.0.1", 0), served.endpoints(SECRET), Limits(**limits))
    try:
        yield endpoints, served
    finally:
        endpoints.close()


def post(path: str = "/hooks/git", body: bytes = b"", **headers: str) -> bytes:
    """A raw POST: ``headers`` as given (``Content_Length`` for ``Content-Length``), then ``body``."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def signed(body: bytes, delivery: str | None = None) -> bytes:
    extra = {"X_GitHub_Delivery": delivery} if delivery else {}
    return post(body=body, Content_Length=str(len(body)), X_Hub_Signature_256=sign(body), **extra)


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (post(X_Hub_Signature_256=sign(b"")), 411),  # no Content-Length
        (post(Content_Length="abc", X_Hub_Signature_256=sign(b"")), 400),
        (post(Content_Length="-5", X_Hub_Signature_256=sign(b"")), 400),
        (post(Content_Length="1e3", X_Hub_Signature_256=sign(b"")), 400),
        (post(Content_Length=str(50 << 20), X_Hub_Signature_256=sign(b"")), 413),
        (post(Content_Length="9" * 5000, X_Hub_Signature_256=sign(b"")), 413),
        (post(Transfer_Encoding="chunked", X_Hub_Signature_256=sign(b"")), 411),
        (post(body=b"{}", Content_Length="2", X_Hub_Signature_256="sha256=nothex"), 401),
        (b"GET /healthz\r\n\r\n", 400),  # HTTP/0.9
        (b"GET /healthz HTTP/2.0\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # TLS to a plain port
        (b"POST /healthz HTTP/1.1\r\n\r\n", 405),
        (b"GET /hooks/git HTTP/1.1\r\n\r\n", 405),
        (b"GET /status HTTP/1.1\r\n" + b"X-Filler: aaaaaaaaaa\r\n" * 2000 + b"\r\n", 431),
    ],
)
def test_a_malformed_or_oversized_request_is_refused_with_its_code(served, request_bytes, code):
    response = raw_request(served.signed.address, request_bytes)
    assert status_code(response) == code, response[:200]
    assert served.hooks == []


def test_a_body_above_the_limit_is_refused_before_it_is_sent(served):
    """The 413 comes on the headers alone: a client waiting for it (Expect: 100-continue) sends nothing."""
    with socket.create_connection(served.signed.address, timeout=5) as sock:
        sock.sendall(post(Content_Length=str(50 << 20), Expect="100-continue", X_Hub_Signature_256=sign(b"")))
        assert sock.recv(4096).startswith(b"HTTP/1.1 413 ")


def test_the_signature_is_computed_as_the_body_streams_in(served):
    body = b'{"ref": "refs/heads/main", "pad": "' + b"x" * 200_000 + b'"}'
    with socket.create_connection(served.signed.address, timeout=5) as sock:
        sock.sendall(signed(body)[: -len(body)])
        for start in range(0, len(body), 50_000):
            sock.sendall(body[start : start + 50_000])
            time.sleep(0.02)
        assert sock.recv(4096).startswith(b"HTTP/1.1 202 ")
    assert served.hooks == ["webhook"]


def test_expect_100_continue_is_answered_before_the_body(served):
    body = b"{}"
    head = post(Content_Length="2", Expect="100-continue", X_Hub_Signature_256=sign(body))
    with socket.create_connection(served.signed.address, timeout=5) as sock:
        sock.sendall(head)
        assert sock.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert sock.recv(4096).startswith(b"HTTP/1.1 202 ")


def test_a_replayed_delivery_is_refused(served, caplog):
    body = b'{"ref": "refs/heads/main"}'
    address = served.signed.address
    with caplog.at_level(logging.WARNING, logger="virt_reconcile.daemon.http"):
        assert status_code(raw_request(address, signed(body, "72d3162e-cc78-11e3-81ab-4c9367dc0958"))) == 202
        assert status_code(raw_request(address, signed(body, "72d3162e-cc78-11e3-81ab-4c9367dc0958"))) == 409
        assert status_code(raw_request(address, signed(body, "another-delivery"))) == 202
        assert status_code(raw_request(address, signed(body, "bad id with spaces"))) == 400
    assert served.hooks == ["webhook", "webhook"]
    assert [r.getMessage() for r in caplog.records] == [
        "refused POST /hooks/git from 127.0.0.1: 409 delivery already received (a replay)",
        "refused POST /hooks/git from 127.0.0.1: 400 unreadable X-GitHub-Delivery",
    ]


def test_the_delivery_ids_remembered_are_bounded():
    deliveries = Deliveries(2)
    assert [deliveries.first(d) for d in ("a", "b", "a", "c", "b", "a")] == [
        True,
        True,
        False,
        True,
        True,
        True,
    ]


def test_a_refusal_is_one_line_without_the_body(served, caplog):
    body = b'{"secret-looking": "BODY-CONTENT"}'
    bad = post(body=body, Content_Length=str(len(body)), X_Hub_Signature_256=sign(body, b"wrong"))
    with caplog.at_level(logging.WARNING, logger="virt_reconcile.daemon.http"):
        assert status_code(raw_request(served.signed.address, bad)) == 401
        assert status_code(raw_request(served.signed.address, b"GET /\x1b[31mred HTTP/1.1\r\n\r\n")) == 400
        assert (
            status_code(raw_request(served.signed.address, "GET /caf\u00e9 HTTP/1.1\r\n\r\n".encode())) == 404
        )
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "refused POST /hooks/git from 127.0.0.1: 401 bad signature",
        "refused - from 127.0.0.1: 400 not an HTTP/1 request line",  # a terminal escape never logged
        "refused GET /caf\\xc3\\xa9 from 127.0.0.1: 404 not found",  # escaped: one ASCII line
    ]


def test_a_slow_request_times_out_with_408():
    with server(request_timeout=0.3) as (endpoints, _served):
        started = time.monotonic()
        response = raw_request(endpoints.address, b"GET /healthz HTTP/1.1\r\n", close_write=False)
        assert status_code(response) == 408 and time.monotonic() - started < 3
        deadline = time.monotonic() + 2  # the server forgets it a moment after closing it
        while endpoints.open_connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert endpoints.open_connections == 0


def test_a_body_shorter_than_announced_is_refused_when_the_peer_stops(served):
    body = b"{}"
    truncated = post(body=body, Content_Length="100", X_Hub_Signature_256=sign(body))
    assert status_code(raw_request(served.signed.address, truncated)) == 400
    assert served.hooks == []


def test_slow_clients_beyond_the_limit_cannot_starve_healthz(caplog):
    """Forty slow clients against four connections: each new connection closes the oldest one still
    sending its request, so /healthz always gets through, and no thread is spent on any of them."""
    with server(connections=4) as (endpoints, _served):
        threads = threading.active_count()
        slow = [socket.create_connection(endpoints.address, timeout=5) for _ in range(40)]
        try:
            for sock in slow:
                sock.sendall(b"GET /heal")
            for _ in range(5):
                assert request(f"{endpoints.url}/healthz") == (200, b"ok\n")
            assert endpoints.open_connections <= 4
            assert threading.active_count() <= threads
        finally:
            for sock in slow:
                sock.close()
    dropped = [r for r in caplog.records if "still sending its request" in r.getMessage()]
    assert len(dropped) >= 36


def test_a_new_connection_is_refused_with_503_when_every_slot_is_being_answered():
    release = threading.Event()
    with server(connections=2, workers=1) as (endpoints, served):
        served.status_wait = release
        busy = [threading.Thread(target=request, args=(f"{endpoints.url}/status",)) for _ in range(2)]
        try:
            for thread in busy:
                thread.start()
            deadline = time.monotonic() + 5
            # Both requests fully read: the first is in the one worker, the second waits for it.
            while (endpoints.open_connections < 2 or getattr(served, "status_calls", 0) < 1) and (
                time.monotonic() < deadline
            ):
                time.sleep(0.01)
            time.sleep(0.3)  # the second request's head, sent at the same time, is read by now
            assert status_code(raw_request(endpoints.address, b"GET /healthz HTTP/1.1\r\n\r\n")) == 503
        finally:
            release.set()
            for thread in busy:
                thread.join(10)
