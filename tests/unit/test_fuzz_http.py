"""Fuzzing the daemon's HTTP server: random methods, paths, headers, Content-Length values and bodies
(some correctly signed) sent raw to the real server on a loopback port. Nothing may crash it, every
answer must be a well-formed HTTP response with a known status, and when the fuzzing is over no
connection is left open, no thread was added, and ``/healthz`` still answers."""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
import urllib.request
from http import HTTPStatus

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.daemon.http import Endpoints, HttpEndpoints, Limits
from tests.daemon_helpers import raw_request

SECRET = b"fuzz-secret"
KNOWN_CODES = {status.value for status in HTTPStatus}
RESPONSE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n((?:[!-9;-~]+: [^\r\n]*\r\n)*)\r\n", re.DOTALL)

LATIN1 = st.characters(codec="latin-1")
FIELD_TEXT = st.characters(codec="latin-1", exclude_characters="\r\n")
REQUEST_LINES = st.tuples(
    st.sampled_from(["GET", "POST", "POST", "HEAD", "PUT", "DELETE", "OPTIONS"]),
    st.sampled_from(["/healthz", "/metrics", "/status", "/hooks/git", "/hooks/git", "/hooks/git?x=1", "/"]),
    st.sampled_from(["HTTP/1.1", "HTTP/1.0"]),
).map(" ".join)
ODD_REQUEST_LINES = st.tuples(
    st.one_of(st.sampled_from(["CONNECT", "get", "P0ST", "GET"]), st.text(alphabet=LATIN1, max_size=12)),
    st.one_of(
        st.sampled_from(["*", "//hooks/git", "http://127.0.0.1/status", "/hooks/git"]),
        st.text(alphabet=LATIN1, max_size=40).map(lambda text: "/" + text),
    ),
    st.sampled_from(["HTTP/1.1", "HTTP/0.9", "HTTP/2", "", "http/1.1", "HTTP/1.1 extra"]),
).map(" ".join)
LENGTHS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["", " 5", "0x10", "1e3", "+3", "3, 3", "²", "00000000000000000000002", "1048577"]),
    st.text(alphabet=FIELD_TEXT, max_size=10),
)
HEADER_NAMES = st.one_of(
    st.sampled_from(
        ["Content-Length", "Transfer-Encoding", "Expect", "X-Hub-Signature-256", "X-GitHub-Delivery", "Host"]
    ),
    st.text(alphabet=LATIN1, max_size=20),
)
HEADER_VALUES = st.one_of(
    st.sampled_from(["chunked", "100-continue", "sha256=" + "0" * 64, "d1"]),
    st.text(alphabet=FIELD_TEXT, max_size=60),
    st.text(alphabet=LATIN1, max_size=60),
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A request as a peer may send it: garbage, an odd request line, any endpoint, and most often a
    webhook, its Content-Length and signature right or not."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=300))
    webhook = kind >= 6
    body = draw(st.binary(max_size=2000))
    headers = draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=4 if not webhook else 2))
    if draw(st.integers(0, 3)):
        right = webhook and draw(st.integers(0, 3)) > 0
        headers.append(("Content-Length", str(len(body)) if right else draw(LENGTHS)))
    if draw(st.integers(0, 3)) if webhook else draw(st.booleans()):
        headers.append(
            ("X-Hub-Signature-256", "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest())
        )
        headers.append(("X-GitHub-Delivery", draw(st.sampled_from(["d1", "d2", "d3", "d4"]))))
    headers = draw(st.permutations(headers))
    newline = draw(st.sampled_from(["\r\n", "\r\n", "\r\n", "\n"]))
    lines = (
        st.just("POST /hooks/git HTTP/1.1") if webhook else ODD_REQUEST_LINES if kind < 3 else REQUEST_LINES
    )
    line = draw(lines)
    head = newline.join([line, *(f"{name}: {value}" for name, value in headers)]) + newline * 2
    return head.encode("latin-1") + body


@pytest.fixture(scope="module")
def fuzzed():
    hooks: list[str] = []
    endpoints = HttpEndpoints(
        ("127.0.0.1", 0),
        Endpoints(
            alive=lambda: True,
            metrics=lambda: b"virt_reconcile_x 1.0\n",
            status=lambda: {"hosts": {}, "source": {}, "reconciledRevision": "r1"},
            on_webhook=lambda: hooks.append("webhook"),
            webhook_secret=SECRET,
        ),
        Limits(request_timeout=2.0),  # nothing should wait for it: every request ends with the socket
    )
    yield endpoints
    endpoints.close()


def check_response(data: bytes, response: bytes) -> None:
    """A well-formed response with a known status whose Content-Length is its body's, or (for a
    connection that sent nothing) no response at all."""
    if not data:
        return  # connected and said nothing: closing without a word is an answer too
    final = response
    if final.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"):
        final = final[len(b"HTTP/1.1 100 Continue\r\n\r\n") :]
    match = RESPONSE.match(final)
    assert match is not None, f"not an HTTP response: {response[:200]!r} to {data[:200]!r}"
    assert int(match[1]) in KNOWN_CODES
    lengths = re.findall(rb"Content-Length: (\d+)\r\n", match[2])
    assert lengths == [str(len(final) - match.end()).encode()], response[:300]


def test_no_request_crashes_the_server_or_leaves_anything_behind(fuzzed):
    threads = threading.active_count()

    @settings(
        max_examples=300,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(requests())
    def one_request(data: bytes) -> None:
        check_response(data, raw_request(fuzzed.address, data, timeout=5))

    one_request()
    deadline = time.monotonic() + 5
    while fuzzed.open_connections and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fuzzed.open_connections == 0, "a connection was left open"
    assert threading.active_count() <= threads + 2  # at most the two workers that build /status
    with urllib.request.urlopen(fuzzed.url + "/healthz", timeout=5) as response:
        assert response.status == 200
