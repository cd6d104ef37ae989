"""Retries after a retryable error: capped exponential backoff with jitter, one timer per target.

A target is a host name, or ``None`` for the manifest source. Each failure of a target replaces its
pending timer (never more than one per target); a success forgets the target; a fired timer removes
itself before it asks for the retry.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

BASE_DELAY = 1.0
MAX_BACKOFF = 60.0
JITTER = 0.2  # a delay is drawn from [(1 - JITTER) x d, d]: many daemons do not retry in step

Target = str | None  # a host name, or None: the manifest source


def backoff_delay(
    attempt: int,
    draw: Callable[[float, float], float] = random.uniform,
    *,
    base: float = BASE_DELAY,
    cap: float = MAX_BACKOFF,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, …): ``base x 2^(attempt-1)``, at most
    ``cap``, less up to ``JITTER`` of it at random (``draw(low, high)`` picks in a range)."""
    exponent = min(max(attempt - 1, 0), 62)  # beyond 2^62 the cap has long won
    ceiling = min(cap, base * 2.0**exponent)
    return draw(ceiling * (1 - JITTER), ceiling)


class Retries:
    """The pending retries: at most one timer per target, each calling ``fire(target)`` when due."""

    def __init__(
        self,
        fire: Callable[[Target], None],
        delay: Callable[[int], float] = backoff_delay,
    ) -> None:
        self._fire = fire
        self._delay = delay
        self._lock = threading.Lock()
        self._timers: dict[Target, threading.Timer] = {}
        self._failures: dict[Target, int] = {}

    def failed(self, target: Target) -> tuple[int, float]:
        """Count a failure of ``target`` and (re)schedule its one retry; return (attempt, delay)."""
        with self._lock:
            attempt = self._failures.get(target, 0) + 1
            self._failures[target] = attempt
            delay = self._delay(attempt)
            timer = threading.Timer(delay, self._due, (target,))
            timer.daemon = True
            timer.name = f"retry {target or 'source'}"
            previous = self._timers.pop(target, None)
            self._timers[target] = timer
        if previous is not None:
            previous.cancel()
        timer.start()
        return attempt, delay

    def attempts(self, target: Target) -> int:
        """Failures of ``target`` since its last success."""
        with self._lock:
            return self._failures.get(target, 0)

    def forget(self, target: Target) -> None:
        """``target`` succeeded, or failed in a way no retry fixes: no pending retry, count reset."""
        with self._lock:
            timer = self._timers.pop(target, None)
            self._failures.pop(target, None)
        if timer is not None:
            timer.cancel()

    def pending(self) -> set[Target]:
        """The targets with a retry scheduled."""
        with self._lock:
            return set(self._timers)

    def cancel_all(self) -> None:
        """Cancel every pending retry (the daemon stops)."""
        with self._lock:
            timers = list(self._timers.values())
            self._timers.clear()
        for timer in timers:
            timer.cancel()

    def _due(self, target: Target) -> None:
        """A timer fired: drop it, unless it was replaced meanwhile (then the newer one decides)."""
        with self._lock:
            timer = self._timers.get(target)
            if timer is not threading.current_thread():
                return
            del self._timers[target]
        self._fire(target)
