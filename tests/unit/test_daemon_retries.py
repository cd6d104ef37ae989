"""Retry timers: capped exponential backoff with jitter, one pending retry per target."""

from __future__ import annotations

import threading

import pytest

from reconciler.daemon.retries import JITTER, MAX_BACKOFF, Retries, backoff_delay


def highest(low: float, high: float) -> float:
    return high


def lowest(low: float, high: float) -> float:
    return low


def test_backoff_doubles_up_to_the_cap():
    assert [backoff_delay(n, highest) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff_delay(10_000, highest) == MAX_BACKOFF


def test_jitter_only_shortens_a_delay_and_never_passes_the_cap():
    for attempt in (1, 3, 7, 50):
        ceiling = backoff_delay(attempt, highest)
        assert backoff_delay(attempt, lowest) == pytest.approx(ceiling * (1 - JITTER))
        for _ in range(50):
            assert ceiling * (1 - JITTER) <= backoff_delay(attempt) <= ceiling <= MAX_BACKOFF


def test_one_pending_retry_per_target_replaced_on_each_failure():
    fired: list[str | None] = []
    retries = Retries(fired.append, delay=lambda attempt: 60.0)
    try:
        assert [retries.failed("hv1")[0] for _ in range(5)] == [1, 2, 3, 4, 5]
        retries.failed(None)
        assert retries.pending() == {"hv1", None}
        # this instance's timers only: another test's daemon may still have one pending
        timers = [
            t
            for t in threading.enumerate()
            if t.name.startswith("retry ")
            and getattr(getattr(t, "function", None), "__self__", None) is retries
        ]
        # a replaced timer is cancelled (``finished`` set) though its thread may not have ended yet
        pending = [t for t in timers if t.is_alive() and not t.finished.is_set()]
        assert sorted(t.name for t in pending) == ["retry hv1", "retry source"]
    finally:
        retries.cancel_all()
    assert retries.pending() == set() and fired == []


def test_a_success_cancels_the_retry_and_resets_the_count():
    retries = Retries(lambda target: None, delay=lambda attempt: 60.0)
    retries.failed("hv1")
    retries.failed("hv1")
    retries.forget("hv1")
    assert retries.pending() == set() and retries.attempts("hv1") == 0
    assert retries.failed("hv1")[0] == 1
    retries.cancel_all()


def test_a_fired_retry_is_dropped_and_asks_for_its_target():
    fired = threading.Event()
    seen: list[str | None] = []
    retries = Retries(lambda target: (seen.append(target), fired.set()), delay=lambda attempt: 0.01)
    retries.failed("hv1")
    assert fired.wait(5)
    assert seen == ["hv1"] and retries.pending() == set()
    assert retries.attempts("hv1") == 1  # the count stays until the retry succeeds
