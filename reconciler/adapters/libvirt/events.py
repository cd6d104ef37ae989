"""libvirt domain events for the daemon: one event connection per host, watched for loss.

The daemon corrects drift as it happens, so it keeps a connection to each host open only to hear
about domains being started, stopped, defined or ballooned behind its back. That connection can
die without anyone calling it: libvirtd restarts, the SSH tunnel or the network drops, the socket
is closed. libvirt notices through its keepalive (a ping every few seconds, given up after a few
unanswered) or through the socket's end, and reports it to a close callback; both need libvirt's
event loop running in this process *before* the connection is opened, which
:func:`start_event_loop` does once. :class:`DomainEvents` passes the loss on (``on_lost``), so
whoever owns it (the daemon's watchers) can reopen it without waiting for the next reconcile.
Losing, failing to reopen and reopening a connection are logged here, where libvirt's reason is known.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import libvirt

from reconciler.adapters.libvirt.connections import OpenTimeout, open_within, start_event_loop
from reconciler.spec.models import Host

log = logging.getLogger("virt_reconcile.adapters.events")

#: The event connection is declared dead after this long without an answer (or the host's call
#: timeout, if shorter): drift must not go unheard for long after a network drop.
KEEPALIVE_LIMIT = 20.0

_CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "connection error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "connection closed by the other end",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive timed out",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed by the client",
}

_LIFECYCLE = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shut down",
}


class DomainEvents:
    """Reports domain events of one host (lifecycle, balloon changes) as they happen: drift.

    ``on_event(domain, what)`` is called from libvirt's event thread, and so is ``on_lost(why)``
    when the open connection dies (keepalive timeout, end of the socket, I/O error). :meth:`ensure`
    (re)opens it; it and :meth:`close` may be called from any thread.
    """

    def __init__(
        self,
        host: Host,
        on_event: Callable[[str, str], None],
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.host = host
        self.on_event = on_event
        self.on_lost = on_lost
        self.conn: libvirt.virConnect | None = None
        self._callbacks: list[int] = []
        self._lock = threading.Lock()  # one open or close at a time
        self._down = False  # lost (or never opened): the next open that works is a reopen

    def connected(self) -> bool:
        """Whether the event connection is open and alive."""
        conn = self.conn
        if conn is None:
            return False
        try:
            return bool(conn.isAlive())
        except libvirt.libvirtError:
            return False

    def ensure(self) -> bool:
        """Open the event connection if it is not open and alive; return whether it is now."""
        name = self.host.name
        with self._lock:
            if self.connected():
                return True
            if self.conn is not None and not self._down:
                log.warning("%s: event connection lost (found closed); reopening it", name)
            self._close()
            start_event_loop()
            try:
                self.conn = self._open()
            except (libvirt.libvirtError, OpenTimeout) as err:
                why = err.get_error_message() if isinstance(err, libvirt.libvirtError) else None
                log.info("%s: cannot open the event connection: %s", name, why or err)
                self._down = True
                return False
            if self._down:
                log.info("%s: event connection reopened", name)
            self._down = False
            return True

    def _open(self) -> libvirt.virConnect:
        """A new connection with keepalive, the close callback and the domain events registered."""
        timeouts = self.host.spec.timeouts
        conn = open_within(self.host.spec.uri, timeouts.connect, min(timeouts.call, KEEPALIVE_LIMIT))
        try:
            conn.registerCloseCallback(self._closed, None)
            self._callbacks = [
                conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None
                ),
                conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_BALLOON_CHANGE, self._balloon, None
                ),
            ]
        except libvirt.libvirtError:
            self.conn = conn
            self._close()  # half set up: nothing would be heard on it
            raise
        return conn

    def _closed(self, conn: libvirt.virConnect, reason: int, _opaque: object) -> None:
        """libvirt's close callback: the connection died (not a :meth:`close`: that unregisters first)."""
        why = _CLOSE_REASONS.get(reason, f"closed ({reason})")
        self._down = True
        log.warning("%s: event connection lost (%s); reopening it", self.host.name, why)
        if self.on_lost is not None:
            self.on_lost(why)

    def _lifecycle(
        self, _conn: object, dom: libvirt.virDomain, event: int, _detail: int, _opaque: object
    ) -> None:
        self.on_event(dom.name(), _LIFECYCLE.get(event, f"event {event}"))

    def _balloon(self, _conn: object, dom: libvirt.virDomain, actual: int, _opaque: object) -> None:
        self.on_event(dom.name(), f"balloon {actual} KiB")

    def close(self) -> None:
        """Stop listening."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        """Unregister everything and close; each step on its own, as a dead connection refuses some."""
        conn, callbacks = self.conn, self._callbacks
        self.conn, self._callbacks = None, []
        if conn is None:
            return
        with contextlib.suppress(libvirt.libvirtError):
            conn.unregisterCloseCallback()
        for callback in callbacks:
            with contextlib.suppress(libvirt.libvirtError):
                conn.domainEventDeregisterAny(callback)
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
