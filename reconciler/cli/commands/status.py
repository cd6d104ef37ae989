"""``status``: a running daemon's ``/status``, for people; exits 1 when a host needs attention.

Per host: its result, then every domain that is not ``synced`` (orphans, pending restarts, refusals,
errors, suspended ones, changes waiting) with why; then the passes running now and what the last
passes did. The exit code is 0 when every host is applied, unchanged, deferred by its sync windows,
suspended (or not reported yet), and 1 when any is refused or in error, when the source cannot be
fetched, or when the revision last taken up could not be applied (its manifests invalid: with no
host known yet, that is the only sign): a script or a monitoring check can act on it.

The server may be slow, wrong or hostile: its answer must come whole within :data:`ANSWER_SECONDS`
and :data:`ANSWER_BYTES`, and be a document of the right shape (:mod:`reconciler.cli.statusdoc`),
or the command says which it is not (exit 1) before printing anything.
"""

from __future__ import annotations

import argparse
import http.client
import io
import socket
import sys
import time
import urllib.request
from typing import TYPE_CHECKING, Any

from reconciler.cli.exit_codes import EXIT_ERROR, EXIT_OK
from reconciler.cli.statusdoc import HostLine, PastPass, RunningPass, StatusDocument, parse
from reconciler.errors import StatusError
from reconciler.report import Printer
from reconciler.report import escape_markup as escape

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

COLORS: dict[str | None, str] = {"applied": "green", "unchanged": "green", "refused": "red", "error": "red"}
COLORS |= {"deferred": "yellow", "suspended": "dim"}
#: Each sync state that needs a line, its mark and colour (``synced`` needs none).
MARKS = {
    "error": ("✗", "red"),
    "refused": ("✗", "red"),
    "orphan": ("!", "yellow"),
    "pendingRestart": ("↻", "yellow"),
    "outOfSync": ("~", "yellow"),
    "suspended": ("‖", "dim"),
}
BAD_RESULTS = ("refused", "error")
HISTORY_LINES = 5  # the last passes shown
#: From asking to the answer's last byte, at most (a server trickling it would hold the command).
ANSWER_SECONDS = 10.0
#: The largest answer read (a daemon's document is kilobytes: 50 passes and the hosts' domains).
ANSWER_BYTES = 16 * 1024 * 1024
REASON_CHARS = 200  # of a read error's text, shown


def run(args: argparse.Namespace) -> int:
    """Print the source's problem, each host with its domains needing attention, the passes in
    progress and the last passes; exit 1 when a host is refused or in error, the source fails, or
    the revision could not be applied."""
    document = fetch(args.url)
    out = Printer(sys.stdout)
    if document.source.message:
        out.print(f"[red]source[/red]: {escape(document.source.message)}")
    if document.revision_error:
        out.print(f"[red]revision[/red]: {escape(document.revision_error)}")
    for name, host in document.hosts.items():
        _print_host(out, name, host)
    _print_in_progress(out, document.in_progress)
    _print_history(out, document.history[:HISTORY_LINES])
    failing = (
        document.source.message
        or document.revision_error
        or any(host.result in BAD_RESULTS for host in document.hosts.values())
    )
    return EXIT_ERROR if failing else EXIT_OK


def fetch(url: str) -> StatusDocument:
    """The daemon's ``/status`` document at ``url``; a ``StatusError`` when it cannot be read, is
    not a status document, is larger than :data:`ANSWER_BYTES`, or is not whole in time.

    The time is bounded as a whole, not per read: the status line, headers and body must all have
    come within :data:`ANSWER_SECONDS` (10 s) of asking; every wait for the server (connecting,
    following a redirect, each read) is cut to what is left, so a server sending a byte every few
    seconds is given up at 10 s. What can go past it comes before the answer: the name lookup (not
    bounded, as before) and, each for at most what was left when connecting began, every further
    address of a name tried when the first does not answer, and the TLS handshake over HTTPS.
    """
    address = url.rstrip("/") + "/status"
    opener = urllib.request.build_opener(_DeadlineHandler(time.monotonic() + ANSWER_SECONDS))
    try:
        with opener.open(address, timeout=ANSWER_SECONDS) as response:
            if response.length is not None and response.length > ANSWER_BYTES:
                raise StatusError(f"cannot read {address}: the answer is larger than {_mib(ANSWER_BYTES)}")
            answer = response.read(ANSWER_BYTES + 1)
    except _AnswerTooSlow as err:
        raise StatusError(f"cannot read {address}: no whole answer within {ANSWER_SECONDS:g} s") from err
    except (OSError, ValueError, http.client.HTTPException) as err:
        raise StatusError(f"cannot read {address}: {_reason(err)}") from err
    if len(answer) > ANSWER_BYTES:
        raise StatusError(f"cannot read {address}: the answer is larger than {_mib(ANSWER_BYTES)}")
    return parse(answer, address)


def _reason(err: Exception) -> str:
    """What went wrong, as one line of at most :data:`REASON_CHARS` (it may hold the server's own
    words: a status line that is not HTTP, an error's reason, up to 64 KiB each)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= REASON_CHARS else text[:REASON_CHARS] + "…"


def _mib(size: int) -> str:
    """A size in MiB, as the error about it says it."""
    return f"{size / 1024 / 1024:g} MiB"


class _AnswerTooSlow(Exception):
    """The answer was not whole by its deadline (not an ``OSError``: nothing on the way mistakes it
    for a connection's error)."""


class _DeadlineReader(io.RawIOBase):
    """A connection's bytes, each read waiting for the server only until ``deadline`` (a
    ``time.monotonic`` time), then raising :class:`_AnswerTooSlow`."""

    def __init__(self, sock: socket.socket, raw: io.RawIOBase, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._raw = raw  # the socket's own reader: it keeps the socket open while the answer is read
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int | None:
        """Read what the server has sent, waiting at most until the deadline."""
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise _AnswerTooSlow
        self._sock.settimeout(left)
        try:
            return self._raw.readinto(buffer)
        except TimeoutError as err:  # the wait was cut at the deadline
            raise _AnswerTooSlow from err

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineHandler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """urllib's HTTP and HTTPS, as ``urlopen`` uses them (proxies, redirects, TLS), with every
    answer, a redirect's too, read through a :class:`_DeadlineReader` by one deadline."""

    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline

    def do_open(
        self, http_class: Any, req: urllib.request.Request, **options: Any
    ) -> http.client.HTTPResponse:
        """Open the connection as urllib would, its answers read by the deadline."""
        deadline = self.deadline

        class DeadlineAnswer(http.client.HTTPResponse):
            def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
                super().__init__(sock, *args, **kwargs)
                self.fp = io.BufferedReader(_DeadlineReader(sock, self.fp.detach(), deadline))

        def connection(host: str, /, **settings: Any) -> http.client.HTTPConnection:
            left = deadline - time.monotonic()  # connecting waits no longer than what is left
            if left <= 0:
                raise _AnswerTooSlow
            opened: http.client.HTTPConnection = http_class(host, **settings | {"timeout": left})
            opened.response_class = DeadlineAnswer
            return opened

        return super().do_open(connection, req, **options)


def _print_host(out: Printer, name: str, host: HostLine) -> None:
    color = COLORS.get(host.result, "yellow")
    applied = host.applied_revision[:12] or "never"
    out.print(
        f"[bold]{escape(name)}[/bold]  [{color}]{escape(host.result)}[/{color}]  "
        f"revision {escape(host.revision[:12])}  applied {escape(applied)}  "
        f"[dim]{escape(host.time)}[/dim]"
    )
    if host.message:
        out.print(f"  {escape(host.message)}")
    if host.suspended:
        out.print("  [dim]‖ suspended: every domain is left alone[/dim]")
    if host.deferred:
        out.print(f"  [yellow]changes wait[/yellow]: {escape(host.deferred)}")
    for domain, state in sorted(host.domains.items()):
        if state.sync not in MARKS:
            continue
        mark, tint = MARKS[state.sync]
        why = f": {escape(state.message)}" if state.message else ""
        out.print(
            f"  [{tint}]{mark} {escape(domain)} {escape(state.sync)}[/{tint}] "
            f"[dim]({escape(state.health)})[/dim]{why}"
        )


def _print_in_progress(out: Printer, running: list[RunningPass]) -> None:
    for item in running:
        out.print(
            f"[cyan]in progress[/cyan]: {escape(', '.join(item.hosts))} at "
            f"{escape(item.revision[:12])} ({escape(item.trigger)}) since {escape(item.started)}"
        )


def _print_history(out: Printer, history: list[PastPass]) -> None:
    if not history:
        return
    out.print("last passes:")
    for entry in history:
        color = COLORS.get(entry.result, "yellow")
        hosts = ", ".join(entry.hosts) or "every host"
        did = ", ".join(entry.actions) or entry.message
        repeated = f" ×{entry.count} since {entry.first}" if entry.count > 1 else ""
        out.print(
            f"  [dim]{escape(entry.time)}[/dim]  {escape(hosts)}  "
            f"[{color}]{escape(entry.result)}[/{color}]{escape(repeated)}  "
            f"{escape(entry.revision[:12])} ({escape(entry.trigger)}, "
            f"{entry.duration:.1f}s): {escape(did)}"
        )
