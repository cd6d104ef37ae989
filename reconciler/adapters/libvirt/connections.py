"""Opening libvirt connections that cannot hang: a connect deadline, keepalive, and the event loop
both need.

libvirt has no timeout of its own for opening a connection: on a socket that accepts and never
answers (a hung libvirtd, a dropped network behind an SSH tunnel) ``virConnectOpen`` waits forever.
So the open runs in a thread of its own and the caller waits at most the host's ``connect``
timeout; an open that answers later is closed at once. While an abandoned open of a URI still
waits, another is refused straight away for a while (``retry_after``: a dead host costs one
waiting thread, not one per attempt), then tried again, since the one waiting may wait forever on
a peer that vanished (a rebooted machine, a dropped NAT entry) while the host is back; at most
``STUCK_PER_URI`` abandoned opens of one URI wait at once.

Once open, a connection to a libvirt daemon sends keepalive pings; a peer silent for about the
host's ``call`` timeout is declared dead by libvirt, which closes the connection, so every call in
flight on it fails (a temporary error) instead of waiting forever. Keepalive needs libvirt's event
loop running in this process before the connection is opened: :func:`start_event_loop`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import libvirt

from reconciler.adapters.libvirt.errors import wrap
from reconciler.errors import TemporaryHostError
from reconciler.spec.hosturi import HostURI
from reconciler.spec.models import Timeouts

_EVENT_LOOP_LOCK = threading.Lock()
_EVENT_LOOP_RUNNING = threading.Event()
#: Per URI, the opens that outlived their deadline and still wait for an answer, with when each was
#: abandoned (opens still within their deadline are not here: several connections to one host may
#: be opened at once).
_WAITING: dict[str, list[tuple[threading.Thread, float]]] = {}
_WAITING_LOCK = threading.Lock()
#: The most abandoned opens of one URI left waiting at once (a thread and a socket each).
STUCK_PER_URI = 4
#: Connections being opened to one URI at once (handshakes: an SSH login each over qemu+ssh, where
#: sshd's MaxStartups, 10 by default, drops the excess): the readers and spares of several hosts'
#: work wait their turn instead.
OPENING_PER_URI = 4
_OPENING: dict[str, threading.BoundedSemaphore] = {}
#: Pings without an answer before libvirt declares the peer dead (its own default is 5).
KEEPALIVE_COUNT = 5


def start_event_loop() -> None:
    """libvirt's default event loop, run in a background thread, once per process.

    Events, keepalive pings and close callbacks are all dispatched by it; it must be registered
    before a connection is opened, or that connection has none of them.
    """
    with _EVENT_LOOP_LOCK:
        if _EVENT_LOOP_RUNNING.is_set():
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _EVENT_LOOP_RUNNING.set()


def retry_after(connect_timeout: float) -> float:
    """Seconds after an open was abandoned before another open of its URI is tried."""
    return max(30.0, 3 * connect_timeout)


def _still_waiting(uri: str, connect_timeout: float) -> str | None:
    """Why a new open of ``uri`` is not tried now (abandoned opens of it still wait), or None.
    Called holding ``_WAITING_LOCK``; forgets the abandoned opens that have ended."""
    waiting = [(thread, since) for thread, since in _WAITING.get(uri, ()) if thread.is_alive()]
    _WAITING[uri] = waiting
    if not waiting:
        del _WAITING[uri]
        return None
    if len(waiting) >= STUCK_PER_URI:
        return f"{len(waiting)} earlier attempts to connect still have no answer; none more until one ends"
    age = time.monotonic() - max(since for _, since in waiting)
    if age < retry_after(connect_timeout):
        again = retry_after(connect_timeout) - age
        return f"an earlier attempt to connect still has no answer (for {age:.0f}s; another in {again:.0f}s)"
    return None


def keepalive_for(call_timeout: float) -> tuple[int, int]:
    """Keepalive (interval s, count) declaring a silent peer dead after about ``call_timeout``:
    libvirt gives up after ``interval * (count + 1)`` seconds without an answer."""
    seconds = max(2, round(call_timeout))
    if seconds >= 2 * (KEEPALIVE_COUNT + 1):
        return seconds // (KEEPALIVE_COUNT + 1), KEEPALIVE_COUNT
    return 1, seconds - 1


class OpenTimeout(Exception):
    """No answer from the host within the connect timeout (or an earlier open still waits)."""


@dataclass
class _Attempt:
    """One open running in its own thread: its result, or that the caller stopped waiting."""

    uri: str
    permit: threading.Semaphore
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    conn: libvirt.virConnect | None = None
    error: libvirt.libvirtError | None = None
    abandoned: bool = False

    def run(self) -> None:
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as err:
            self.error = err
            conn = None
        finally:
            self.permit.release()
            with _WAITING_LOCK:
                me = threading.current_thread()
                if self.uri in _WAITING:
                    _WAITING[self.uri] = [entry for entry in _WAITING[self.uri] if entry[0] is not me]
        with self.lock:
            if self.abandoned:
                if conn is not None:
                    conn.close()  # answered too late: nobody will use it
                return
            self.conn = conn
            self.done.set()


def open_within(uri: str, connect_timeout: float, call_timeout: float) -> libvirt.virConnect:
    """A connection to a libvirt daemon at ``uri`` opened within ``connect_timeout`` seconds, with
    keepalive set from ``call_timeout``. Raises ``libvirt.libvirtError`` as ``libvirt.open`` does,
    or :class:`OpenTimeout`."""
    start_event_loop()
    with _WAITING_LOCK:
        why = _still_waiting(uri, connect_timeout)
        if why is not None:
            raise OpenTimeout(why)
        permit = _OPENING.setdefault(uri, threading.BoundedSemaphore(OPENING_PER_URI))
    started = time.monotonic()
    if not permit.acquire(timeout=connect_timeout):  # released by the attempt's thread when it ends
        raise OpenTimeout(
            f"{OPENING_PER_URI} other connections still being opened after {connect_timeout:g}s"
        )
    attempt = _Attempt(uri, permit)
    thread = threading.Thread(target=attempt.run, name="libvirt-open", daemon=True)
    thread.start()
    answered = attempt.done.wait(max(0.0, connect_timeout - (time.monotonic() - started)))
    with attempt.lock:
        if not answered and not attempt.done.is_set():
            attempt.abandoned = True
            with _WAITING_LOCK:  # opens of this URI are refused for a while (``_still_waiting``)
                _WAITING.setdefault(uri, []).append((thread, time.monotonic()))
            raise OpenTimeout(f"no answer within {connect_timeout:g}s")
    if attempt.error is not None:
        raise attempt.error
    conn = attempt.conn
    assert conn is not None
    interval, count = keepalive_for(call_timeout)
    with contextlib.suppress(libvirt.libvirtError):  # a driver without keepalive says so
        conn.setKeepAlive(interval, count)
    return conn


class SpareConnections:
    """Extra connections to one host, for actions run side by side (each connection carries one
    call at a time): opened when first needed, up to ``limit``, closed with the host."""

    def __init__(self, open_one: Callable[[], libvirt.virConnect], limit: int) -> None:
        self._open_one = open_one
        self._limit = limit
        self._idle: list[libvirt.virConnect] = []
        self._count = 0
        self._ready = threading.Condition()

    def take(self) -> libvirt.virConnect:
        """An idle connection, or a new one while fewer than ``limit`` exist, else the next freed."""
        with self._ready:
            while not self._idle and self._count >= self._limit:
                self._ready.wait()
            if self._idle:
                return self._idle.pop()
            self._count += 1
        try:
            return self._open_one()
        except BaseException:
            with self._ready:
                self._count -= 1
                self._ready.notify()
            raise

    def give(self, conn: libvirt.virConnect) -> None:
        """Hand a connection back for the next action."""
        with self._ready:
            self._idle.append(conn)
            self._ready.notify()

    def close(self) -> None:
        """Close every spare connection (all are idle once the host's work is over)."""
        with self._ready:
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()


def open_connection(name: str, uri: str, timeouts: Timeouts | None = None) -> libvirt.virConnect:
    """Connect to ``uri``; a failure is classified like any other (a bad URI is not retried). A
    libvirt daemon must answer within the connect timeout and stays watched by keepalive."""
    try:
        if HostURI(uri).in_process:
            return libvirt.open(uri)  # a function call: nothing to time out
        timeouts = timeouts or Timeouts()
        return open_within(uri, timeouts.connect, timeouts.call)
    except libvirt.libvirtError as err:
        raise wrap(name, f"cannot connect to {uri}", err) from err
    except OpenTimeout as err:
        raise TemporaryHostError(name, f"cannot connect to {uri}: {err}") from err
