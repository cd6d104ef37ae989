"""What one pass does, decided from the triggers that asked for it: a pure function, no I/O.

The loop collects a burst of triggers into a batch, asks :func:`needs_fetch`, fetches when told to,
then asks :func:`decide` which of the known hosts to reconcile and why. The reason travels with
each host: only a domain event (``drift``) counts as a drift correction, and a host retried after a
temporary error is reported as a retry.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum


class Trigger(StrEnum):
    """Why a pass was asked for."""

    START = "start"
    POLL = "poll"  # the poller's regular fetch: reconciles only when the revision moved
    WEBHOOK = "webhook"
    FILES = "files"  # the watched manifest directory changed
    DRIFT = "drift"  # a libvirt event on a host's domain
    RESYNC = "resync"
    RETRY = "retry"  # with a host: that host failed with a temporary error; without: the fetch did
    WINDOW = "window"  # a host's sync window opened (or its deny window closed): its changes may go


class Reason(StrEnum):
    """Why one host is reconciled in a pass."""

    REVISION = "new revision"
    DRIFT = "drift"
    RETRY = "retry"
    FETCH_RETRY = "fetch retry"
    START = "start"
    WEBHOOK = "webhook"
    FILES = "files"
    RESYNC = "resync"
    WINDOW = "sync window"


Batch = Sequence[tuple[Trigger, str | None]]

#: The triggers that name one host and reconcile it at the revision already there.
_HOST_ONLY = (Trigger.DRIFT, Trigger.RETRY, Trigger.WINDOW)

#: The triggers that ask for every host even when the revision did not move, strongest first.
_EVERY_HOST = {
    Trigger.START: Reason.START,
    Trigger.WEBHOOK: Reason.WEBHOOK,
    Trigger.FILES: Reason.FILES,
    Trigger.RESYNC: Reason.RESYNC,
}


@dataclass(frozen=True)
class HostTask:
    """One host to reconcile in this pass, and why."""

    host: str
    reason: Reason  # only Reason.DRIFT counts what the reconcile changes as drift corrections


@dataclass(frozen=True)
class Decision:
    """The hosts a pass reconciles (in the order known), at which revision."""

    revision: str
    tasks: tuple[HostTask, ...] = ()


def needs_fetch(batch: Batch, reconciled: str) -> bool:
    """Whether the pass must fetch the source first.

    Only domain events, host retries and sync windows opening can do without: they reconcile the
    revision already there.
    """
    if not reconciled:
        return True
    return any(kind not in _HOST_ONLY or host is None for kind, host in batch)


def is_idle(batch: Batch, before: str, after: str) -> bool:
    """A routine poll that found nothing new: nothing to load, nothing to reconcile."""
    return after == before and all(kind is Trigger.POLL for kind, _ in batch)


def _every_host_reason(batch: Batch, moved: bool) -> Reason | None:
    """Why every host is reconciled, or None when only the hosts named by events or retries are."""
    if moved:
        return Reason.REVISION
    kinds = {kind for kind, _ in batch}
    for trigger, reason in _EVERY_HOST.items():
        if trigger in kinds:
            return reason
    if any(kind is Trigger.RETRY and host is None for kind, host in batch):
        return Reason.FETCH_RETRY
    return None


def decide(batch: Batch, before: str, after: str, known: Iterable[str]) -> Decision:
    """Which of the ``known`` hosts (the selected hosts of the manifests) to reconcile, and why.

    ``before`` is the revision last reconciled, ``after`` the one there now (after any fetch). A new
    revision reconciles every host; so do a start, a webhook, a watched change and a resync. Without
    those, only the hosts with a domain event (drift), a due retry or a sync window opening are
    reconciled. A host with both an event and a retry is drift: the event is what changed it.
    """
    moved = after != before
    if is_idle(batch, before, after):
        return Decision(after)
    drifted = {host for kind, host in batch if kind is Trigger.DRIFT and host}
    retried = {host for kind, host in batch if kind is Trigger.RETRY and host}
    opened = {host for kind, host in batch if kind is Trigger.WINDOW and host}
    every = _every_host_reason(batch, moved)
    tasks: list[HostTask] = []
    for host in dict.fromkeys(known):
        if moved:
            tasks.append(HostTask(host, Reason.REVISION))
        elif host in drifted:
            tasks.append(HostTask(host, Reason.DRIFT))
        elif host in retried:
            tasks.append(HostTask(host, Reason.RETRY))
        elif host in opened:
            tasks.append(HostTask(host, Reason.WINDOW))
        elif every is not None:
            tasks.append(HostTask(host, every))
    return Decision(after, tuple(tasks))
