"""``virt-reconcile status`` against a server gone wrong or hostile (a real HTTP server on 127.0.0.1):
a document of another shape, an answer that is not HTTP, one trickled a byte at a time, one too large.
Each is one ``error:`` line naming the URL and what is wrong (a ``StatusError``), never a traceback
and never a wait without end."""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import BinaryIO

import pytest

from reconciler.cli.commands import status
from reconciler.errors import StatusError
from tests.helpers import cli

#: How long a trickling answer keeps going at most: far past the deadline, and a regression that
#: waits for the whole answer fails when it ends instead of hanging the run.
TRICKLE_LIMIT_SECONDS = 60.0
TRICKLE_INTERVAL_SECONDS = 0.2  # a byte this often: each read of the old code got one in time
DEADLINE_SECONDS = 1.0  # the answer's deadline in these tests (10 s in use), so they run quickly

Answer = Callable[[BinaryIO, threading.Event], None]


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], str]]:
    """A local HTTP server on which each ``GET`` is answered by the test's function, writing raw
    bytes (status line and headers included) until it is done or the server stops."""
    answers: list[Answer] = []
    stopping = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with contextlib.suppress(OSError):  # the client gave up: what it should do
                answers[-1](self.wfile, stopping)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def url_answering(answer: Answer) -> str:
        answers.append(answer)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield url_answering
    stopping.set()
    server.shutdown()
    server.server_close()


def http_answer(body: bytes, *headers: str) -> Answer:
    """A whole answer at once: 200, the headers given (``Content-Length`` when none), ``body``."""
    head = list(headers) or [f"Content-Length: {len(body)}"]

    def answer(out: BinaryIO, _stopping: threading.Event) -> None:
        out.write("\r\n".join(["HTTP/1.0 200 OK", "Content-Type: application/json", *head, "", ""]).encode())
        out.write(body)

    return answer


MALFORMED = [
    ({"hosts": []}, "hosts should be an object, not a list"),
    ({"source": "x"}, "source should be an object, not text"),
    ({"hosts": {"a": {"domains": []}}}, "hosts.a.domains should be an object, not a list"),
    ({"hosts": {"a": {"result": 3}}}, "hosts.a.result should be text, not a number"),
    ({"hosts": {"a": None}}, "hosts.a should be an object, not null"),
    ({"hosts": {"a": {"suspended": "no"}}}, "hosts.a.suspended should be true or false, not text"),
    (
        {"hosts": {"a": {"domains": {"web": {"sync": "orphan", "health": 1}}}}},
        "hosts.a.domains.web.health should be text, not a number",
    ),
    ({"revisionError": ["x"]}, "revisionError should be text, not a list"),
    ({"inProgress": {"hosts": []}}, "inProgress should be a list, not an object"),
    ({"history": [None]}, "history[0] should be an object, not null"),
    ({"history": [{"hosts": "hv1"}]}, "history[0].hosts should be a list, not text"),
    ({"history": [{"duration": "fast"}]}, "history[0].duration should be a number, not text"),
    ({"history": [{"count": True}]}, "history[0].count should be a whole number, not true or false"),
    (
        {"hosts": {"a.b\n[red]c": {"domains": []}, "ok": {"result": 1}}},
        'hosts."a.b\\n[red]c".domains should be an object, not a list (and 1 more problem)',
    ),
]


@pytest.mark.parametrize(("document", "problem"), MALFORMED, ids=[p for _, p in MALFORMED])
def test_a_document_of_another_shape_is_one_error_line_naming_the_url_and_the_place(serve, document, problem):
    url = serve(http_answer(json.dumps(document).encode()))
    shown = cli("status", "--url", url)
    assert (shown.code, shown.out) == (1, "")  # nothing printed before the problem was found
    assert shown.err.splitlines() == [f"error: cannot read {url}/status: not a status document: {problem}"]


def test_null_is_taken_as_a_field_left_out(serve):
    """What a ``status.json`` edited by hand or written by an older daemon may hold: shown with the
    defaults a missing field has."""
    host = {"revision": None, "result": None, "appliedRevision": None, "time": None, "domains": None}
    document = {"hosts": {"hv1": host}, "source": None, "revisionError": None, "history": None}
    shown = cli("status", "--url", serve(http_answer(json.dumps(document).encode())))
    assert (shown.code, shown.err) == (0, "")
    assert shown.out.splitlines() == ["hv1  ?  revision   applied never  "]


def raw_answer(text: bytes) -> Answer:
    """``text`` as it is, whatever it is."""
    return lambda out, _stopping: out.write(text)


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (raw_answer(b"hello, this is not HTTP\r\n\r\n"), "hello, this is not HTTP"),
        (raw_answer(b"\x1b[31m" * 8000 + b"\r\n\r\n"), "\\x1b[31m" * 20 + "…"),  # shown clipped
        (http_answer(b'{"hosts": {}', "Content-Length: 100"), "not JSON (EOF while parsing"),
    ],
    ids=["not HTTP", "a long line", "cut short"],
)
def test_an_answer_that_is_not_http_or_cut_short_is_one_short_error_line(serve, answer, problem):
    url = serve(answer)
    shown = cli("status", "--url", url)
    assert shown.code == 1
    [line] = shown.err.splitlines()
    assert line.startswith(f"error: cannot read {url}/status: ") and problem in line and len(line) < 500


def trickle(head: bytes, slow: bytes) -> Answer:
    """``head`` at once, then ``slow`` a byte every :data:`TRICKLE_INTERVAL_SECONDS`, for at most
    :data:`TRICKLE_LIMIT_SECONDS` (or until the test ends)."""

    def answer(out: BinaryIO, stopping: threading.Event) -> None:
        out.write(head)
        ends = time.monotonic() + TRICKLE_LIMIT_SECONDS
        for byte in slow:
            if stopping.wait(TRICKLE_INTERVAL_SECONDS) or time.monotonic() > ends:
                return
            out.write(bytes([byte]))

    return answer


BODY = json.dumps({"hosts": {}, "padding": "x" * 1000}).encode()  # 200 s at a byte per 0.2 s


@pytest.mark.parametrize(
    "answer",
    [
        trickle(b"HTTP/1.0 200 OK\r\n", b"X-Slow: " + b"y" * 1000 + b"\r\n\r\n{}"),
        trickle(f"HTTP/1.0 200 OK\r\nContent-Length: {len(BODY)}\r\n\r\n".encode(), BODY),
    ],
    ids=["headers", "body"],
)
def test_an_answer_trickled_a_byte_at_a_time_is_given_up_at_the_deadline(serve, monkeypatch, answer):
    monkeypatch.setattr(status, "ANSWER_SECONDS", DEADLINE_SECONDS, raising=False)
    url = serve(answer)
    with pytest.raises(StatusError, match=rf"^cannot read {url}/status: no whole answer within 1 s$"):
        status.run(argparse.Namespace(url=url))


TOO_LARGE = 16 * 1024 * 1024 + 1


@pytest.mark.parametrize(
    "answer",
    [
        http_answer(b"{}", f"Content-Length: {TOO_LARGE}"),  # said at once: nothing more is read
        http_answer(b'{"hosts": {}, "padding": "' + b"x" * TOO_LARGE + b'"}', "Connection: close"),
    ],
    ids=["declared", "sent without a length"],
)
def test_an_answer_larger_than_16_mib_is_an_error(serve, answer):
    url = serve(answer)
    with pytest.raises(StatusError, match=rf"^cannot read {url}/status: the answer is larger than 16 MiB$"):
        status.run(argparse.Namespace(url=url))
