"""Fixtures shared by the unit tests of the daemon."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.daemon_helpers import retry_timers


@pytest.fixture
def no_timers_left() -> Iterator[None]:
    """Retry timers a test leaves behind are cancelled (they would only enqueue a trigger)."""
    before = retry_timers()
    yield
    for timer in retry_timers() - before:
        timer.cancel()
