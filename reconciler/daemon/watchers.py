"""Domain events from the hosts (libvirt's event connections): each one triggers a drift pass.

An event connection can die between two passes (libvirtd restarted, the network or the SSH
tunnel cut); while it is down, drift goes unseen. The event adapter reports the loss (keepalive or
end of socket, from libvirt's own thread), and a reconnect thread of this module's reopens the
connection with capped, jittered exponential backoff: never the reconcile loop, which must not wait
on an unreachable host. Once reopened, the host gets a drift pass, since whatever changed during
the outage was not heard. A reconcile pass only opens a host's first connection (so it listens
before it reconciles) and hands any connection it finds dead to the reconnect thread. Like the
other modules that only keep state, this one logs nothing: the event adapter logs each loss, failed
reopen and reopen, with libvirt's reason.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from reconciler.daemon.retries import backoff_delay
from reconciler.spec.manifests import ManifestSet
from reconciler.spec.models import Host

RECONNECT_BASE = 1.0  # seconds before the second attempt (the first is at once), then doubled
RECONNECT_CAP = 30.0  # never longer between two attempts: a host back is heard from soon
REOPENS_AT_ONCE = 8  # lost event connections reopened side by side


class Watcher(Protocol):
    """One host's event connection (``reconciler.adapters.libvirt.events.DomainEvents``)."""

    def ensure(self) -> bool:
        """Open it unless it is open and alive; whether it is open now."""
        ...

    def connected(self) -> bool:
        """Whether it is open and alive."""
        ...

    def close(self) -> None:
        """Stop listening."""
        ...


#: Opens a host's event connection: ``factory(host, on_event, on_lost)``; libvirt's thread calls
#: ``on_event(domain, what)`` per event and ``on_lost(why)`` when the connection dies.
EventsFactory = Callable[[Host, Callable[[str, str], None], Callable[[str], None]], Watcher]


#: Seconds the daemon's shutdown waits, in all, for its event connections to close.
CLOSE_WAIT = 5.0


def _close_quietly(watcher: Watcher) -> None:
    """Close an event connection no longer wanted; an error closing it changes nothing."""
    with contextlib.suppress(Exception):
        watcher.close()


def reconnect_delay(attempt: int) -> float:
    """Seconds after failed reopen number ``attempt`` before the next: 1, 2, 4 … 30 s, jittered."""
    return backoff_delay(attempt, base=RECONNECT_BASE, cap=RECONNECT_CAP)


@dataclass
class _Pending:
    """A host whose connection is down: how many reopens failed, and when the next is due."""

    failures: int = 0
    due: float = 0.0
    why: str = ""


class ReconnectSchedule:
    """Which lost connections to reopen when: pure bookkeeping, every time passed in (a fake clock
    in tests). A loss is due at once; each failed reopen pushes it back by ``delay(failures)``."""

    def __init__(self, delay: Callable[[int], float] = reconnect_delay) -> None:
        self._delay = delay
        self._pending: dict[str, _Pending] = {}

    def lost(self, host: str, now: float, why: str = "") -> bool:
        """``host``'s connection died; True unless it was already waiting (then its backoff holds)."""
        if host in self._pending:
            return False
        self._pending[host] = _Pending(due=now, why=why)
        return True

    def failed(self, host: str, now: float) -> tuple[int, float]:
        """A reopen of ``host`` failed: (failures so far, seconds until the next attempt)."""
        pending = self._pending.setdefault(host, _Pending())
        pending.failures += 1
        delay = self._delay(pending.failures)
        pending.due = now + delay
        return pending.failures, delay

    def reopened(self, host: str) -> int:
        """``host`` is listening again (or no longer watched): forget it; return its failed reopens."""
        pending = self._pending.pop(host, None)
        return pending.failures if pending is not None else 0

    def due(self, now: float) -> list[str]:
        """The hosts whose next reopen is due at ``now``."""
        return [host for host, pending in self._pending.items() if pending.due <= now]

    def why(self, host: str) -> str:
        """What the loss of ``host``'s connection was reported as."""
        pending = self._pending.get(host)
        return pending.why if pending is not None else ""

    def waiting(self) -> set[str]:
        """The hosts waiting to be reopened."""
        return set(self._pending)

    def wait_time(self, now: float) -> float | None:
        """Seconds until the next reopen is due (0 when one is); None when nothing is lost."""
        if not self._pending:
            return None
        return max(0.0, min(p.due for p in self._pending.values()) - now)


class DomainWatchers:
    """One event connection per real (non-sandbox) host; ``on_drift(host)`` per event, and once a
    lost connection is back (what happened meanwhile was not heard)."""

    def __init__(
        self,
        factory: EventsFactory | None,
        on_drift: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        schedule: ReconnectSchedule | None = None,
        background: bool = True,
    ) -> None:
        self.factory = factory
        self.on_drift = on_drift
        self._clock = clock
        self._schedule = schedule or ReconnectSchedule()
        self._watchers: dict[str, Watcher] = {}
        self._uris: dict[str, str] = {}
        self._wake = threading.Condition()  # guards the dicts and the schedule
        self._closed = False
        self._background = background  # False: no reconnect thread, the caller runs reconnect_due()
        self._thread: threading.Thread | None = None

    def ensure(self, manifests: ManifestSet, hosts: Iterable[str]) -> None:
        """Keep exactly ``hosts`` (:meth:`keep`) and listen on each now (:meth:`listen`)."""
        for host in self.keep(manifests, hosts):
            self.listen(host)

    def keep(self, manifests: ManifestSet, hosts: Iterable[str]) -> list[Host]:
        """Stop listening on hosts no longer kept (or whose address changed); the hosts that want
        an event connection (not the sandbox, which is only looked at during a pass). No waiting on
        any host: the loop calls this, and each lane calls :meth:`listen` for its own host."""
        if self.factory is None:
            return []
        wanted = {
            name: manifests.hosts[name] for name in hosts if not manifests.hosts[name].spec.address.is_sandbox
        }
        for name in set(self._watchers) - set(wanted):
            self._forget(name)
        for name, host in wanted.items():
            if self._uris.get(name) not in (None, host.spec.uri):
                self._forget(name)  # the Host moved to another address: listen there instead
        return list(wanted.values())

    def listen(self, host: Host) -> None:
        """Listen on ``host`` before its pass (a new connection is opened now, within the host's
        connect timeout: the pass then reconciles while listening); a dead connection goes to the
        reconnect thread."""
        if self.factory is None or host.spec.address.is_sandbox:
            return
        with self._wake:
            watcher = self._watchers.get(host.name)
        if watcher is None:
            self._open_first(host.name, host)
        elif not watcher.connected():
            self._lost(host.name, "found closed by a pass")

    def _open_first(self, name: str, host: Host) -> None:
        """Open a host's first connection in the calling thread; on failure, back off in the other."""
        assert self.factory is not None
        watcher = self.factory(host, self._on_event(name), self._on_lost(name))
        with self._wake:
            self._watchers[name], self._uris[name] = watcher, host.spec.uri
        if watcher.ensure():
            return
        with self._wake:
            self._schedule.failed(name, self._clock())
            self._start_thread()
            self._wake.notify_all()

    def _forget(self, name: str) -> None:
        """Stop listening on ``name`` and drop its pending reopen. The connection is closed in a
        thread of its own: closing one to a host gone silent waits for libvirt to give up on it,
        which the loop (the caller) must not."""
        with self._wake:
            watcher = self._watchers.pop(name, None)
            self._uris.pop(name, None)
            self._schedule.reopened(name)
        if watcher is not None:
            threading.Thread(
                target=_close_quietly, args=(watcher,), name=f"events-close-{name}", daemon=True
            ).start()

    def _on_event(self, host: str) -> Callable[[str, str], None]:
        def on_event(domain: str, what: str) -> None:
            self.on_drift(host)

        return on_event

    def _on_lost(self, host: str) -> Callable[[str], None]:
        def on_lost(why: str) -> None:
            self._lost(host, why)

        return on_lost

    def _lost(self, host: str, why: str) -> None:
        """A connection died (libvirt's thread, or a pass found it so): queue it for reopening."""
        with self._wake:
            if self._closed or host not in self._watchers:
                return
            if not self._schedule.lost(host, self._clock(), why):
                return
            self._start_thread()
            self._wake.notify_all()

    def reconnect_due(self) -> None:
        """Try to reopen every connection whose time has come (what the reconnect thread does each
        time it wakes; tests call it with a fake clock). A reopened host gets a drift pass."""
        with self._wake:
            due = [(host, self._watchers[host]) for host in self._schedule.due(self._clock())]
        if len(due) <= 1:
            for host, watcher in due:
                self._reopen(host, watcher)
            return
        # Side by side: a dead host's open waits out its connect timeout, which a host that is back
        # must not wait behind.
        with ThreadPoolExecutor(min(len(due), REOPENS_AT_ONCE), thread_name_prefix="events-reopen") as pool:
            list(pool.map(lambda pair: self._reopen(*pair), due))

    def _reopen(self, host: str, watcher: Watcher) -> None:
        """One attempt at reopening ``host``: a drift pass when it worked, else the next backoff."""
        opened = watcher.ensure()
        with self._wake:
            if self._watchers.get(host) is not watcher:
                return  # forgotten or replaced meanwhile
            if opened:
                self._schedule.reopened(host)
            else:
                self._schedule.failed(host, self._clock())
        if opened:
            self.on_drift(host)

    def _start_thread(self) -> None:
        """The reconnect thread, started the first time a connection is down (hold ``_wake``)."""
        if self._background and self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name="events-reconnect", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        """Sleep until a reopen is due (or a loss is reported), then try it; until :meth:`close`."""
        while True:
            with self._wake:
                if self._closed:
                    return
                wait = self._schedule.wait_time(self._clock())
                if wait is None or wait > 0:
                    self._wake.wait(timeout=wait)
                    continue
            self.reconnect_due()

    def waiting(self) -> set[str]:
        """The hosts whose event connection is down, waiting to be reopened."""
        with self._wake:
            return self._schedule.waiting()

    def close(self) -> None:
        """Stop the reconnect thread and close every event connection, side by side: closing one to
        a host gone silent waits for libvirt to give up on it (up to its call timeout), which the
        daemon's shutdown waits for only ``CLOSE_WAIT`` seconds, once, for all of them."""
        with self._wake:
            self._closed = True
            watchers = list(self._watchers.items())
            self._watchers.clear()
            self._uris.clear()
            self._wake.notify_all()
            thread = self._thread
        closing = [
            threading.Thread(target=_close_quietly, args=(watcher,), name=f"events-close-{name}", daemon=True)
            for name, watcher in watchers
        ]
        for closer in closing:
            closer.start()
        deadline = time.monotonic() + CLOSE_WAIT
        for closer in closing:
            closer.join(max(0.0, deadline - time.monotonic()))
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
