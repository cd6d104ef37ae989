"""Wake-ups at a deferred host's next sync-window boundary, so a short window is not missed.

A host whose changes wait outside its sync windows would otherwise be looked at again only at the
next resync, drift or push: a ten-minute window between two hourly resyncs would pass unseen. After
each deferred pass the loop asks :func:`next_boundary` when the deferral may end (an allow window
opening, a deny window open now closing) and :class:`Wakeups` asks for a pass of that host then.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime

from reconciler.spec.syncwindows import SyncWindow

#: A wake-up comes this long after the boundary, so the pass surely judges the window open (a
#: timer may fire a little early against the wall clock, and schedules fire on whole minutes).
SLACK_SECONDS = 1.0


def next_boundary(windows: Sequence[SyncWindow], now: datetime) -> datetime | None:
    """The first moment after ``now`` at which a host's deferral may end: an allow window opening,
    or a deny window open at ``now`` closing; None when none ever will. Whether the host's changes
    may go then is judged by the pass it wakes (another window may still hold them)."""
    moments = [
        moment
        for window in windows
        if (moment := window.next_opens(now) if window.kind == "allow" else window.closes(now)) is not None
    ]
    return min(moments, default=None)


class Wakeups:
    """At most one pending wake-up per host; each calls ``fire(host)`` when due."""

    def __init__(self, fire: Callable[[str], None]) -> None:
        self._fire = fire
        self._lock = threading.Lock()
        self._timers: dict[str, tuple[threading.Timer, datetime]] = {}

    def at(self, host: str, moment: datetime, now: datetime) -> float:
        """Wake ``host`` at ``moment`` (judged against ``now``), replacing any wake-up it had; the
        delay in seconds."""
        delay = max(0.0, (moment - now).total_seconds()) + SLACK_SECONDS
        timer = threading.Timer(delay, self._due, (host,))
        timer.daemon = True
        timer.name = f"wake {host}"
        with self._lock:
            previous = self._timers.get(host)
            self._timers[host] = (timer, moment)
        if previous is not None:
            previous[0].cancel()
        timer.start()
        return delay

    def forget(self, host: str) -> None:
        """``host`` has nothing waiting for a window: no wake-up."""
        with self._lock:
            previous = self._timers.pop(host, None)
        if previous is not None:
            previous[0].cancel()

    def pending(self) -> dict[str, datetime]:
        """Each host with a wake-up, and the boundary it waits for."""
        with self._lock:
            return {host: moment for host, (_timer, moment) in self._timers.items()}

    def cancel_all(self) -> None:
        """Cancel every wake-up (the daemon stops)."""
        with self._lock:
            timers = [timer for timer, _moment in self._timers.values()]
            self._timers.clear()
        for timer in timers:
            timer.cancel()

    def _due(self, host: str) -> None:
        """A timer fired: drop it, unless it was replaced meanwhile (then the newer one decides)."""
        with self._lock:
            entry = self._timers.get(host)
            if entry is None or entry[0] is not threading.current_thread():
                return
            del self._timers[host]
        self._fire(host)
