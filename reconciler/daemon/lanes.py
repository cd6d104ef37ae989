"""One lane per host: each host is reconciled by a thread of its own, so a slow host (a 60-second
graceful shutdown, a hung hypervisor waiting out its timeout) delays nothing on another, and an
event for one host is never queued behind another host's pass.

The loop hands each lane the newest work for its host (:meth:`HostLanes.submit`); work asked for
while the lane is busy waits as one pending job, replaced by newer work (the newest revision is
what the host must reach). At most ``parallel`` lanes reconcile at once. A pass may need other
hosts beside its own: a domain moving between two hosts is one move only when both are in the
run, so the pass names those peers and the lane runs once more with them, holding every involved
host's lane lock (taken in one global order, so two lanes never wait on each other in a circle).

A revision that drops a host (relabelled out of the selector, removed from git, renamed) retires its
lane (:meth:`HostLanes.keep`): the job waiting there is cancelled, a job that would start for it does
nothing (checked under the lanes' lock as it starts, so no job slips past a newer revision), a pass
already running finishes (it holds the host's lock), and the lane's thread ends once idle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from reconciler.daemon.decision import Reason
from reconciler.spec.manifests import ManifestSet

log = logging.getLogger("virt_reconcile.daemon.lanes")

#: A drift pass waits this long before it starts, taking whatever newer work came meanwhile: libvirt
#: reports a change as a burst of events (defined, started, resumed ...), and a pass of our own ends
#: with the echoes of what it did, so one pass answers the burst.
DRIFT_SETTLE_SECONDS = 0.1


@dataclass(frozen=True)
class LaneJob:
    """What a lane reconciles next: its host at a revision's manifests, and why."""

    manifests: ManifestSet
    revision: str
    reason: Reason


#: Reconciles the given hosts together, each with its job; returns the hosts the pass needed beside
#: them (the other halves of moves), empty when it needed none.
LaneWork = Callable[[Mapping[str, LaneJob]], frozenset[str]]


class HostLanes:
    """The daemon's per-host worker threads, started on first use and kept while their host is managed."""

    def __init__(self, work: LaneWork, *, parallel: int, stop: threading.Event) -> None:
        self._work = work
        self._stop = stop
        self._slots = threading.BoundedSemaphore(max(1, parallel))
        self._guard = threading.Condition()
        self._pending: dict[str, LaneJob] = {}
        self._newest: LaneJob | None = None  # the last job submitted (to any lane)
        self._running: set[str] = set()
        self._threads: dict[str, threading.Thread] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._managed: frozenset[str] | None = None  # None until told (:meth:`keep`): every host

    def keep(self, hosts: Iterable[str]) -> set[str]:
        """Only ``hosts`` are managed from now on: the job waiting in any other lane is cancelled and
        that lane ends once idle; the hosts whose waiting job was cancelled."""
        with self._guard:
            self._managed = frozenset(hosts)
            cancelled = {host for host in self._pending if host not in self._managed}
            for host in cancelled:
                del self._pending[host]
            self._guard.notify_all()
            return cancelled

    def _manages(self, host: str) -> bool:
        """Whether ``host`` is managed (the guard held)."""
        return self._managed is None or host in self._managed

    def submit(self, host: str, job: LaneJob) -> None:
        """Ask ``host``'s lane to reconcile ``job`` (replacing any job still waiting there)."""
        with self._guard:
            self._pending[host] = job
            self._newest = job
            self._locks.setdefault(host, threading.Lock())
            if host not in self._threads:
                thread = threading.Thread(target=self._lane, args=(host,), name=f"lane-{host}", daemon=True)
                self._threads[host] = thread
                thread.start()
            self._guard.notify_all()

    def busy(self) -> set[str]:
        """The hosts whose lane is reconciling or has work waiting (what /status will show)."""
        with self._guard:
            return self._running | set(self._pending)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no lane has work; False if ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._guard:
            while self._running or self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._guard.wait(left)
        return True

    def close(self, timeout: float) -> None:
        """Wake every lane to see :attr:`stop` and wait up to ``timeout`` seconds for them to end (a
        pass in flight ends between two actions)."""
        with self._guard:
            self._guard.notify_all()
            threads = list(self._threads.values())
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------------------------ a lane

    def _lane(self, host: str) -> None:
        """Take this host's jobs one at a time until the daemon stops or the host is dropped."""
        while True:
            with self._guard:
                job = self._next(host)
                if job is None:
                    return
            try:
                self._run(host, job)
            except Exception:  # the work reports its own errors; this is a bug's, and the lane lives on
                log.exception("%s: the lane's pass failed", host)
            finally:
                with self._guard:
                    self._running.discard(host)
                    self._guard.notify_all()

    def _next(self, host: str) -> LaneJob | None:
        """The lane's next job (the guard held), now marked running; None when the lane ends: the
        daemon stops, or its host is no longer managed (a job for it cancelled, the lane retired)."""
        while host not in self._pending and self._serving(host):
            self._guard.wait(1.0)
        job = None
        if self._serving(host):
            job = self._pending.pop(host)
            self._running.add(host)
            if job.reason is Reason.DRIFT:  # a burst of events: one pass
                settled = time.monotonic() + DRIFT_SETTLE_SECONDS
                while (left := settled - time.monotonic()) > 0 and self._serving(host):
                    self._guard.wait(left)
                job = self._pending.pop(host, job)
            if not self._serving(host):  # stopped, or dropped while it settled
                self._running.discard(host)
                job = None
        if job is None:
            self._pending.pop(host, None)
            if not self._stop.is_set() and self._threads.get(host) is threading.current_thread():
                del self._threads[host]  # retired: a job for the host, managed again, starts a new lane
            self._guard.notify_all()
        return job

    def _serving(self, host: str) -> bool:
        """Whether ``host``'s lane goes on (the guard held): the daemon runs and the host is managed."""
        return not self._stop.is_set() and self._manages(host)

    def _run(self, host: str, job: LaneJob) -> None:
        """One pass of ``host``; again with the peers it named, all of their lanes held."""
        peers = self._together({host: job})
        if peers and not self._stop.is_set():
            with self._guard:  # a peer dropped meanwhile is not written
                known = {peer for peer in peers if peer in job.manifests.hosts and self._manages(peer)}
            if not known:
                return
            log.info(
                "%s: reconciling again with %s (a domain moves between them)", host, ", ".join(sorted(known))
            )
            self._together({name: job for name in {host, *known}})

    def _together(self, jobs: Mapping[str, LaneJob]) -> frozenset[str]:
        """Run the work for these hosts holding their lane locks (in name order); the peers it names
        beyond them."""
        with self._guard:
            locks = [self._locks.setdefault(name, threading.Lock()) for name in sorted(jobs)]
        for lock in locks:
            lock.acquire()
        try:
            with self._slots:  # taken once the lanes are held: waiting on a peer costs no slot
                with self._guard:  # a host dropped while this waited for its lane or a slot: not written
                    jobs = {name: job for name, job in jobs.items() if self._serving(name)}
                return self._work(jobs) - set(jobs) if jobs else frozenset()
        finally:
            for lock in reversed(locks):
                lock.release()
