"""Notifications sent off the reconcile loop: one bounded queue and one sender thread per receiver.

The loop (and the host lanes) only hand a :class:`~reconciler.daemon.notices.Notice` to
:meth:`Notifier.host_verdict` or :meth:`Notifier.revision_failed`, which filter it and append it to
each receiver's queue: no network, no waiting, so a dead or slow receiver never slows a pass, nor
another receiver. Each sender POSTs within a timeout and tries again with backoff after a network
error, a 5xx, 408 or 429 (never after another 4xx: the same request would be refused again). A full
queue drops its oldest notice. Every outcome is counted in ``virt_reconcile_notifications_total``
(``sent``, ``failed``, ``dropped``, ``skipped``); a failing receiver is logged once, when it starts
failing, and again when it delivers again, never with its secret path, query or token.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Sequence
from email.message import Message

from prometheus_client import CollectorRegistry, Counter

from reconciler.daemon.decision import Reason
from reconciler.daemon.logs import one_line
from reconciler.daemon.notices import (
    Event,
    Notice,
    NoticeFilter,
    Notifications,
    NotifyValueError,
    Receiver,
    ReceiverKind,
    Request,
    request_for,
)
from reconciler.daemon.status import now
from reconciler.daemon.verdict import HostVerdict
from reconciler.engine.apply import ActionResult

log = logging.getLogger("virt_reconcile.daemon.notify")

RESULTS = ("sent", "failed", "dropped", "skipped")
RETRY_STATUSES = frozenset({408, 429})  # with every 5xx: the receiver may take the same request later
ANSWER_BYTES = 300  # of a refusal's body, shown in the log (GitHub says why: "Bad credentials")
DETAIL_CHARS = 200


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: urllib would send the token on to wherever a 3xx points."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: object,
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)  # proxies from https_proxy / no_proxy, as urllib does


def post(request: Request, timeout: float) -> tuple[str | None, bool]:
    """POST ``request``: None on a 2xx answer, else what went wrong and whether trying again may help."""
    sent = urllib.request.Request(request.url, data=request.body, headers=request.headers, method="POST")
    try:
        with _OPENER.open(sent, timeout=timeout) as response:
            response.read(ANSWER_BYTES)
            return None, False
    except urllib.error.HTTPError as err:
        retry = err.code >= 500 or err.code in RETRY_STATUSES
        return f"HTTP {err.code} {err.reason}{_answer(err)}", retry
    except urllib.error.URLError as err:  # refused, no such host, TLS: the reason, never the URL
        return _described(err.reason), True
    except (OSError, http.client.HTTPException) as err:  # timed out or reset while reading the answer
        return _described(err), True


def _answer(err: urllib.error.HTTPError) -> str:
    """The start of a refusal's body, as one line (empty when there is none or it cannot be read)."""
    try:
        text = one_line(err.read(ANSWER_BYTES).decode("utf-8", "replace"))
    except (OSError, http.client.HTTPException):
        return ""
    return f": {text[:DETAIL_CHARS]}" if text else ""


def _described(reason: object) -> str:
    text = one_line(str(reason))
    kind = type(reason).__name__ if isinstance(reason, BaseException) else ""
    return f"{kind}: {text}" if kind and text else (kind or text or "no answer")


class Sender:
    """One receiver's queue and the thread that empties it, one notice at a time, in order."""

    def __init__(
        self, receiver: Receiver, settings: Notifications, counter: Counter, stop: threading.Event
    ) -> None:
        self.receiver = receiver
        self.settings = settings
        self._counter = counter
        self._stop = stop
        self._queue: deque[Notice] = deque()
        self._ready = threading.Condition()
        self._closing = False
        self._dropping = False  # a drop was logged: the next is not, until the queue has room again
        self._failures = 0  # deliveries failed since the receiver last took one (0: it is fine)
        for result in RESULTS:
            counter.labels(receiver.name, result)  # every series exported from the start, at 0
        self.thread = threading.Thread(target=self._run, name=f"notify {receiver.kind.value}", daemon=True)
        self.thread.start()

    def put(self, notice: Notice) -> None:
        """Queue ``notice``; a full queue drops its oldest first (counted, logged once per burst)."""
        with self._ready:
            if len(self._queue) >= self.settings.capacity:
                self._queue.popleft()
                self._count("dropped")
                if not self._dropping:
                    log.warning(
                        "notifications to %s: queue full (%d), dropping the oldest",
                        self.receiver.name,
                        self.settings.capacity,
                    )
                self._dropping = True
            self._queue.append(notice)
            self._ready.notify()

    def close(self) -> None:
        """Deliver what is queued, then end (the caller bounds the wait with :attr:`thread`)."""
        with self._ready:
            self._closing = True
            self._ready.notify()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closing:
                    self._ready.wait()
                if not self._queue or self._stop.is_set():
                    return
                notice = self._queue.popleft()
                if len(self._queue) < self.settings.capacity // 2:
                    self._dropping = False
            try:
                self._deliver(notice)
            except Exception as err:  # a bug must not end the sender: the next notice still goes
                self._failed(f"{type(err).__name__}: {one_line(str(err))[:DETAIL_CHARS]}", 1)

    def _deliver(self, notice: Notice) -> None:
        """Send one notice, trying again with backoff while that may help."""
        try:
            request = request_for(self.receiver, notice)
        except NotifyValueError as err:  # the token file went away since the start
            self._failed(str(err), 0)
            return
        if request is None:
            self._count("skipped")
            return
        delay, attempt = self.settings.backoff, 1
        while (problem := post(request, self.settings.timeout))[0] is not None:
            if not problem[1] or attempt >= self.settings.attempts or self._stop.wait(delay):
                self._failed(problem[0], attempt)
                return
            delay, attempt = delay * 2, attempt + 1
        self._sent()

    def _sent(self) -> None:
        """Count a delivery (after its log line: whoever watches the counter sees the line too)."""
        if self._failures:
            log.info(
                "notifications to %s: delivered again (%d failed meanwhile)",
                self.receiver.name,
                self._failures,
            )
        self._failures = 0
        self._count("sent")

    def _failed(self, problem: str, attempts: int) -> None:
        """Count a failure; log it when it is the first since the receiver last took a notice."""
        self._failures += 1
        if self._failures == 1:
            log.warning(
                "notification to %s failed after %d attempt(s): %s; until it delivers again, its "
                "failures are counted (virt_reconcile_notifications_total), not logged",
                self.receiver.name,
                attempts,
                problem,
            )
        self._count("failed")

    def _count(self, result: str) -> None:
        self._counter.labels(self.receiver.name, result).inc()


class Notifier:
    """The daemon's notifications: which verdicts to send (:class:`NoticeFilter`) and a
    :class:`Sender` per receiver. Without receivers it does nothing and starts no thread."""

    def __init__(self, settings: Notifications, registry: CollectorRegistry) -> None:
        self.filter = NoticeFilter()
        self.counter = Counter(
            "virt_reconcile_notifications_total",
            "Notifications by receiver and result (sent, failed, dropped, skipped)",
            ["receiver", "result"],
            registry=registry,
        )
        self._stop = threading.Event()
        self.senders = [
            Sender(receiver, settings, self.counter, self._stop) for receiver in settings.receivers
        ]

    def host_verdict(
        self,
        host: str,
        revision: str,
        verdict: HostVerdict,
        reason: Reason,
        results: Sequence[ActionResult] = (),
    ) -> None:
        """One host's verdict: queued for every receiver when it is news (never waits). A commit
        status is news at each revision a host reaches, even one that changes nothing there: a
        commit without a status would look as if it never reached the host."""
        if not self.senders:
            return
        drift = verdict.drift_corrections > 0
        first = self.filter.first_at(host, revision)
        event = self.filter.verdict(host, revision, verdict.result, drift, verdict.message)
        actions = tuple(f"{r.action.kind.value} {r.action.domain}" for r in results)
        if event is not None:
            self._queue(Notice(event, host, revision, verdict.message, now(), reason.value, actions))
        elif first and verdict.result == "unchanged":
            unchanged = Notice(Event.UNCHANGED, host, revision, verdict.message, now(), reason.value)
            self._queue(unchanged, only=ReceiverKind.GITHUB)

    def revision_failed(self, revision: str, message: str, hosts: Sequence[str] = ()) -> None:
        """A revision no host could use (invalid manifests): an error for every receiver, once."""
        if self.senders and self.filter.revision_failed(hosts, revision, message):
            self._queue(Notice(Event.ERROR, "", revision, message, now()))

    def _queue(self, notice: Notice, only: ReceiverKind | None = None) -> None:
        """``notice`` for every sender, or only those of the ``only`` kind."""
        for sender in self.senders:
            if only is None or sender.receiver.kind is only:
                sender.put(notice)

    def close(self, timeout: float) -> None:
        """Give the senders up to ``timeout`` seconds to deliver what is queued, then stop them
        (a sender still waiting on a receiver is left behind: its thread ends with the process)."""
        deadline = time.monotonic() + timeout
        for sender in self.senders:
            sender.close()
        for sender in self.senders:
            sender.thread.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()
