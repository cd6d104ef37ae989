"""The daemon's HTTP endpoints, served by one asyncio thread that no network peer can wear out.

``GET /`` (the dashboard, HTML), ``GET /healthz`` (is the loop alive), ``GET /metrics``
(Prometheus), ``GET /status`` (JSON) and, with a webhook secret, ``POST /hooks/git`` (an
HMAC-signed push notification that triggers a pass). The handlers only read (through callables that
return copies) or enqueue a trigger.

Whoever can reach the port is a peer to distrust, so what one may cost is bounded (:class:`Limits`):
a connection costs a buffer, never a thread (one event loop serves them all; two worker threads
build ``/``, ``/status`` and ``/metrics``, so ``/healthz`` is answered from the loop at once); a
request must arrive whole within a time limit; at most so many connections are open, and a new one
beyond that closes the oldest one still sending its request (a slow client loses its place to a new
one, so a probe of ``/healthz`` gets through a flood of slow clients); a webhook body has a size
limit, checked on ``Content-Length`` before a byte of it is read, and its HMAC is computed as it
streams in; a delivery id seen before is a replay. Every connection is closed after its answer.

Requests that are answered are not logged (``/metrics`` is scraped every few seconds); each refused
one is, in one line: its method and path, the caller's address and why (never its body).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import http.client
import io
import ipaddress
import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import Message
from http import HTTPStatus
from typing import Any, SupportsIndex

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from reconciler.daemon.dashboard import CONTENT_SECURITY_POLICY

log = logging.getLogger("virt_reconcile.daemon.http")

#: ``METHOD SP request-target SP HTTP/1.x``: the only request line served (no HTTP/0.9, no HTTP/2).
REQUEST_LINE = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]{1,20}) ([\x21-\x7e\x80-\xff]+) HTTP/1\.[01]")
SIGNATURE = re.compile(r"sha256=[0-9a-f]{64}")  # GitHub's X-Hub-Signature-256
DELIVERY = re.compile(r"[\x21-\x7e]{1,100}")  # X-GitHub-Delivery: a GUID, printable and short
CHUNK = 64 * 1024
#: Connections the kernel holds until they are accepted: a burst beyond it is dropped by the kernel
#: (and its clients try again a second later), a probe among them too. Accepting is quick: the
#: limit on open connections is applied after, by closing slow ones.
BACKLOG = 1024
GET_PATHS = ("/", "/healthz", "/metrics", "/status")
WEBHOOK_PATH = "/hooks/git"
#: The dashboard's header fields: no script, no frame, no referrer, its one stylesheet only.
PAGE_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


@dataclass(frozen=True)
class Limits:
    """What one network peer may cost the daemon; the README's "Security: network peers" says why."""

    connections: int = 64  # open at once; beyond, the oldest one still sending its request is closed
    request_timeout: float = 10.0  # to send the request (head and body), and again to take the answer
    head_bytes: int = 16 * 1024  # the request line and headers
    body_bytes: int = 1024 * 1024  # a webhook body (GitHub's push payloads are far smaller)
    deliveries: int = 10_000  # X-GitHub-Delivery ids remembered to refuse a replay
    workers: int = 2  # threads that build /, /status and /metrics


@dataclass(frozen=True)
class Endpoints:
    """What the endpoints answer with; each callable is safe to call from any thread."""

    alive: Callable[[], bool]
    metrics: Callable[[], bytes]
    status: Callable[[], dict[str, Any]]
    on_webhook: Callable[[], None]
    webhook_secret: bytes | None = None  # None: no webhook (404)
    dashboard: Callable[[dict[str, Any]], bytes] | None = None  # /status as the page at GET /, or 404


@dataclass(frozen=True)
class Response:
    """An answer; ``refusal`` says why a request was refused (logged), None for a served one."""

    code: int
    body: bytes
    content_type: str = "application/json"
    refusal: str | None = None
    allow: str | None = None  # the methods a path takes, for a 405
    headers: tuple[tuple[str, str], ...] = ()  # more header fields (the dashboard's security policy)

    def encode(self) -> bytes:
        """The whole HTTP/1.1 response; the connection closes after it."""
        lines = [
            f"HTTP/1.1 {self.code} {HTTPStatus(self.code).phrase}",
            "Server: virt-reconcile",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
        ]
        if self.allow:
            lines.append(f"Allow: {self.allow}")
        lines.extend(f"{name}: {value}" for name, value in self.headers)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + self.body


def refuse(code: int, reason: str, allow: str | None = None) -> Response:
    """A refusal: ``{"error": reason}`` with ``code``, logged with the caller's address."""
    return Response(code, json.dumps({"error": reason}).encode() + b"\n", refusal=reason, allow=allow)


@dataclass(frozen=True)
class Request:
    """A request line and headers that parsed."""

    method: str
    path: str  # without the query
    headers: Message


def parse_head(head: bytes) -> Request | Response:
    """The request in ``head`` (request line and headers, CRLF-terminated), or a 400 saying why not."""
    line, _, fields = head.partition(b"\r\n")
    match = REQUEST_LINE.fullmatch(line.decode("latin-1"))
    if match is None:
        return refuse(400, "not an HTTP/1 request line")
    try:
        headers = http.client.parse_headers(io.BytesIO(fields))
    except http.client.HTTPException:
        return refuse(400, "unreadable headers")
    return Request(match[1], match[2].split("?", 1)[0], headers)


def content_length(headers: Message, limit: int) -> int | Response:
    """The body's length from ``Content-Length``, or the refusal: 411 without one (or chunked),
    400 when it is not one non-negative number, 413 above ``limit`` (no byte of the body read)."""
    if headers.get("Transfer-Encoding") is not None:
        return refuse(411, "a body must come with Content-Length, not Transfer-Encoding")
    values = {str(value).strip() for value in headers.get_all("Content-Length") or ()}
    if not values:
        return refuse(411, "Content-Length required")
    if len(values) > 1:
        return refuse(400, "conflicting Content-Length headers")
    [text] = values
    if not (text.isascii() and text.isdigit()):
        return refuse(400, "Content-Length is not a non-negative number")
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(limit)) or int(digits) > limit:
        return refuse(413, f"body larger than {limit} bytes")
    return int(digits)


def signature_ok(secret: bytes, body: bytes, signature: str) -> bool:
    """Whether ``signature`` is GitHub's ``X-Hub-Signature-256`` of ``body`` under ``secret``."""
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(signature.encode(), expected.encode())


class Deliveries:
    """The ``X-GitHub-Delivery`` ids of the last webhooks accepted, oldest forgotten first."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def first(self, delivery: str) -> bool:
        """Remember ``delivery``; whether it is new (False: a replay)."""
        with self._lock:
            if delivery in self._seen:
                self._seen.move_to_end(delivery)
                return False
            self._seen[delivery] = None
            if len(self._seen) > self._size:
                self._seen.popitem(last=False)
            return True


def exposure_warning(host: str, webhook: bool) -> str | None:
    """The warning to log when the endpoints listen beyond loopback (None on loopback)."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return None
    endpoints = ", ".join(f"GET {path}" for path in GET_PATHS)
    hook = f", POST {WEBHOOK_PATH} (HMAC-signed)" if webhook else ""
    return (
        f"listening on {host}, not loopback: {endpoints}{hook} answer anyone who can reach the port "
        "(/status names hosts, domains and errors); prefer a loopback address behind a TLS proxy"
    )


def _printable(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters, control and non-ASCII characters escaped (for a log line)."""
    cut = text[:limit] + ("…" if len(text) > limit else "")
    return cut.encode("ascii", "backslashreplace").decode("ascii").replace("\x7f", "\\x7f")


class _Reader(asyncio.StreamReader):
    """A stream reader that notes when a request's head has arrived, before anyone reads it: a
    connection whose whole head is waiting is a fast client, never one to close to make room."""

    head_arrived = False
    _head_tail = b""  # the last bytes fed, for a CRLFCRLF split across two reads

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        if not self.head_arrived:
            window = self._head_tail + bytes(data)  # the transport feeds bytes: no copy
            self.head_arrived = b"\r\n\r\n" in window
            self._head_tail = window[-3:]
        super().feed_data(data)


class _Connection:
    """One open connection: who, what it asked (once known), and whether it is still sending."""

    def __init__(self, peer: str, reader: _Reader, writer: asyncio.StreamWriter, deadline: float) -> None:
        self.peer = peer
        self.reader = reader
        self.writer = writer
        self.deadline = deadline  # loop time by which the whole request must have arrived
        self.what = "-"  # "METHOD /path" once the request line is read
        self.reading = True
        self.evicted = False

    @property
    def slow(self) -> bool:
        """Still sending its request, and not merely waiting for its turn with a whole head."""
        return self.reading and not (self.reader.head_arrived and self.what == "-")

    def log_refusal(self, response: Response) -> None:
        """One line: what, from where, the code and why."""
        log.warning("refused %s from %s: %d %s", self.what, self.peer, response.code, response.refusal)


def _peer(writer: asyncio.StreamWriter) -> str:
    """The caller's address, for the log."""
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "an unknown peer"


class _Server:
    """The connections of one :class:`HttpEndpoints`; everything but the workers runs in its loop."""

    def __init__(self, endpoints: Endpoints, limits: Limits) -> None:
        self.endpoints = endpoints
        self.limits = limits
        self.open: dict[_Connection, None] = {}  # an ordered set: the oldest first
        self.deliveries = Deliveries(limits.deliveries)
        self.workers = ThreadPoolExecutor(limits.workers, thread_name_prefix="http-worker")

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer one connection, then close it; nothing a peer sends gets past this method."""
        assert isinstance(reader, _Reader)
        deadline = asyncio.get_running_loop().time() + self.limits.request_timeout
        conn = _Connection(_peer(writer), reader, writer, deadline)
        # One turn of the loop first: the heads that arrived with a burst of new connections are
        # seen before any of them is admitted, so none is closed as slow for want of a look.
        await asyncio.sleep(0)
        if not self._admit(conn):
            busy = refuse(503, f"{len(self.open)} connections busy answering")
            conn.log_refusal(busy)
            writer.write(busy.encode())  # a few bytes into an empty socket buffer: no wait
            writer.close()
            return
        self.open[conn] = None
        try:
            response = await self._receive(reader, conn)
            if response is not None and not conn.evicted:
                await self._finish(conn, response)
        except Exception as err:  # a bug: this connection ends, the server goes on
            log.error("%s from %s failed: %s: %s", conn.what, conn.peer, type(err).__name__, err)
        finally:
            self.open.pop(conn, None)
            writer.transport.abort()  # a no-op once closed

    def _admit(self, conn: _Connection) -> bool:
        """Make room for ``conn``: at the limit, close the oldest connection still sending its
        request; False when every open connection is being answered (``conn`` is refused)."""
        if len(self.open) < self.limits.connections:
            return True
        oldest = next((old for old in self.open if old.slow), None)
        if oldest is None:
            return False
        oldest.evicted = True
        dropped = refuse(503, f"still sending its request with {len(self.open)} connections open")
        oldest.log_refusal(dropped)
        oldest.writer.write(dropped.encode())
        oldest.writer.transport.abort()
        del self.open[oldest]
        return True

    async def _receive(self, reader: asyncio.StreamReader, conn: _Connection) -> Response | None:
        """Read the request and decide its answer; None when the peer left or was dropped."""
        try:
            async with asyncio.timeout_at(conn.deadline):
                head = await reader.readuntil(b"\r\n\r\n")
            request = parse_head(head)
            if isinstance(request, Response):
                return request
            conn.what = f"{request.method} {_printable(request.path)}"
            return await self._route(request, reader, conn)
        except TimeoutError:
            return refuse(408, f"request not received within {self.limits.request_timeout:g}s")
        except asyncio.LimitOverrunError:
            return refuse(431, f"request head larger than {self.limits.head_bytes} bytes")
        except asyncio.IncompleteReadError as err:
            if conn.evicted or not err.partial:
                return None  # dropped, or connected and left without a word
            return refuse(400, "connection closed before the end of the request")
        except ConnectionError:
            return None

    async def _route(self, request: Request, reader: asyncio.StreamReader, conn: _Connection) -> Response:
        """The answer to a request whose head is read."""
        if request.path == "/" and self.endpoints.dashboard is None:
            return refuse(404, "not found")
        if request.path in GET_PATHS:
            if request.method != "GET":
                return refuse(405, "method not allowed", allow="GET")
            conn.reading = False
            return await self._get(request.path)
        secret = self.endpoints.webhook_secret
        if request.path == WEBHOOK_PATH and secret is not None:
            if request.method != "POST":
                return refuse(405, "method not allowed", allow="POST")
            return await self._webhook(request, reader, conn, secret)
        return refuse(404, "not found")

    async def _get(self, path: str) -> Response:
        """``/healthz`` at once; ``/``, ``/status`` and ``/metrics`` built by a worker thread."""
        if path == "/healthz":
            alive = self.endpoints.alive()
            return Response(200 if alive else 503, b"ok\n" if alive else b"stopped\n", "text/plain")
        build = {"/metrics": self._metrics, "/status": self._status}.get(path, self._dashboard)
        work = asyncio.get_running_loop().run_in_executor(self.workers, build)
        try:
            return await asyncio.wait_for(work, self.limits.request_timeout)
        except TimeoutError:
            return refuse(503, f"{path} not ready within {self.limits.request_timeout:g}s")

    def _metrics(self) -> Response:
        return Response(200, self.endpoints.metrics(), CONTENT_TYPE_LATEST)

    def _status(self) -> Response:
        return Response(200, json.dumps(self.endpoints.status(), indent=2).encode() + b"\n")

    def _dashboard(self) -> Response:
        assert self.endpoints.dashboard is not None  # routed here only with a page to serve
        page = self.endpoints.dashboard(self.endpoints.status())
        return Response(200, page, "text/html; charset=utf-8", headers=PAGE_HEADERS)

    async def _webhook(
        self, request: Request, reader: asyncio.StreamReader, conn: _Connection, secret: bytes
    ) -> Response:
        """Check a push notification's size, signature and delivery id, then trigger a pass."""
        length = content_length(request.headers, self.limits.body_bytes)
        if isinstance(length, Response):
            return length
        signature = str(request.headers.get("X-Hub-Signature-256", ""))
        if not SIGNATURE.fullmatch(signature):
            return refuse(401, "bad signature")  # no need to read a body no secret signed
        delivery = request.headers.get("X-GitHub-Delivery")
        if delivery is not None and not DELIVERY.fullmatch(str(delivery)):
            return refuse(400, "unreadable X-GitHub-Delivery")
        if str(request.headers.get("Expect", "")).lower() == "100-continue":
            conn.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        mac = hmac.new(secret, digestmod=hashlib.sha256)
        if not await self._stream(reader, length, mac.update, conn.deadline):
            return refuse(400, "body shorter than its Content-Length")
        conn.reading = False
        if not hmac.compare_digest(signature, "sha256=" + mac.hexdigest()):
            return refuse(401, "bad signature")
        if delivery is not None and not self.deliveries.first(str(delivery)):
            return refuse(409, "delivery already received (a replay)")
        self.endpoints.on_webhook()
        return Response(202, b'{"accepted": true}\n')

    @staticmethod
    async def _stream(
        reader: asyncio.StreamReader, length: int, take: Callable[[bytes], object], deadline: float
    ) -> bool:
        """Hand ``length`` bytes of body to ``take`` as they come; False if the peer sent fewer."""
        remaining = length
        async with asyncio.timeout_at(deadline):
            while remaining:
                chunk = await reader.read(min(CHUNK, remaining))
                if not chunk:
                    return False
                take(chunk)
                remaining -= len(chunk)
        return True

    async def _finish(self, conn: _Connection, response: Response) -> None:
        """Send ``response`` and close; a peer that does not take it in time is cut off."""
        if response.refusal is not None:
            conn.log_refusal(response)
        conn.reading = False
        writer = conn.writer
        try:
            writer.write(response.encode())
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), self.limits.request_timeout)
        except (TimeoutError, OSError):
            writer.transport.abort()

    async def shutdown(self, listener: asyncio.Server) -> None:
        """Stop listening, cut every connection and end their tasks."""
        listener.close()
        for conn in list(self.open):
            conn.writer.transport.abort()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class HttpEndpoints:
    """The HTTP server: an event loop serving from a thread of its own until :meth:`close`."""

    def __init__(self, listen: tuple[str, int], endpoints: Endpoints, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._server = _Server(endpoints, self.limits)
        self._loop = asyncio.new_event_loop()
        try:  # bound here, so a port in use is the caller's error at once
            self._listener = self._loop.run_until_complete(
                self._loop.create_server(self._protocol, listen[0], listen[1], backlog=BACKLOG)
            )
        except BaseException:
            self._loop.close()
            self._server.workers.shutdown(wait=False)
            raise
        self._closed = False
        self._thread = threading.Thread(target=self._loop.run_forever, name="http", daemon=True)
        self._thread.start()

    def _protocol(self) -> asyncio.StreamReaderProtocol:
        """A new connection's protocol: :func:`asyncio.start_server`'s, with a :class:`_Reader`."""
        reader = _Reader(limit=self.limits.head_bytes, loop=self._loop)
        return asyncio.StreamReaderProtocol(reader, self._server.serve, loop=self._loop)

    @property
    def address(self) -> tuple[str, int]:
        """Where the endpoints listen (the real port when 0 was asked for)."""
        host, port = self._listener.sockets[0].getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (``[HOST]`` for IPv6)."""
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def open_connections(self) -> int:
        """Connections open now (read from another thread: a moment's count)."""
        return len(self._server.open)

    def close(self) -> None:
        """Stop serving, close every connection and the socket, end the thread."""
        if self._closed:
            return
        self._closed = True
        done = asyncio.run_coroutine_threadsafe(self._server.shutdown(self._listener), self._loop)
        with contextlib.suppress(Exception):
            done.result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()
        self._server.workers.shutdown(wait=False, cancel_futures=True)
