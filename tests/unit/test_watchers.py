"""The daemon's event watchers: a lost event connection is reopened, with backoff, outside the loop.

The watchers are driven here with a fake clock and fake event connections (the daemon's own
``Watcher`` interface, not libvirt: the real connection is tested against libvirtd in
tests/e2e/test_event_reconnect.py). ``background=False`` keeps the reconnect thread out, so each
test runs the thread's step, :meth:`DomainWatchers.reconnect_due`, itself, at the time it chooses.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.daemon import watchers as watchers_module
from reconciler.daemon.retries import JITTER
from reconciler.daemon.watchers import (
    RECONNECT_BASE,
    RECONNECT_CAP,
    DomainWatchers,
    ReconnectSchedule,
    reconnect_delay,
)
from reconciler.spec.manifests import ManifestSet
from reconciler.spec.models import Host


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeEvents:
    """One host's event connection: ``up`` says whether an open succeeds; ``die()`` is libvirt's
    close callback (keepalive timeout, end of socket)."""

    def __init__(self, host: Host, on_event: Callable[[str, str], None], on_lost: Callable[[str], None]):
        self.host, self.on_event, self.on_lost = host, on_event, on_lost
        self.up = True
        self.open = False
        self.opens = 0
        self.closed = False

    def ensure(self) -> bool:
        self.opens += 1
        self.open = self.up
        return self.open

    def connected(self) -> bool:
        return self.open

    def close(self) -> None:
        self.open, self.closed = False, True

    def die(self, why: str = "connection closed by the other end") -> None:
        self.open = False
        self.on_lost(why)


class Hosts:
    """The factory the daemon is given: it records every connection made, per host."""

    def __init__(self) -> None:
        self.made: dict[str, list[FakeEvents]] = {}
        self.up: dict[str, bool] = {}

    def __call__(self, host, on_event, on_lost) -> FakeEvents:
        events = FakeEvents(host, on_event, on_lost)
        events.up = self.up.get(host.name, True)
        self.made.setdefault(host.name, []).append(events)
        return events

    def last(self, name: str) -> FakeEvents:
        return self.made[name][-1]


def spec(uri: str) -> dict:
    return {"spec": {"uri": uri}}


def manifests(**uris: str) -> ManifestSet:
    hosts = {
        name: Host.model_validate(
            {"apiVersion": "virt-reconcile/v1", "kind": "Host", "metadata": {"name": name}, **spec(uri)}
        )
        for name, uri in uris.items()
    }
    return ManifestSet(root=Path("."), hosts=hosts)


def fixed_delay(attempt: int) -> float:
    """No jitter: 1, 2, 4, 8 … seconds (the real schedule's shape)."""
    return min(RECONNECT_CAP, RECONNECT_BASE * 2 ** (attempt - 1))


@pytest.fixture
def rig():
    clock, hosts, drift = Clock(), Hosts(), []
    watchers = DomainWatchers(
        hosts, drift.append, clock=clock, schedule=ReconnectSchedule(fixed_delay), background=False
    )
    yield watchers, clock, hosts, drift
    watchers.close()


# ------------------------------------------------------------------------------------- the schedule


def test_a_loss_is_due_at_once_and_each_failure_doubles_the_wait_up_to_the_cap():
    schedule = ReconnectSchedule(fixed_delay)
    assert schedule.wait_time(0.0) is None
    assert schedule.lost("hv1", 10.0, "eof")
    assert schedule.due(10.0) == ["hv1"] and schedule.wait_time(10.0) == 0
    waits = []
    now = 10.0
    for _ in range(8):
        _, delay = schedule.failed("hv1", now)
        assert schedule.due(now + delay - 0.001) == [], "due before its backoff is over"
        now += delay
        assert schedule.due(now) == ["hv1"]
        waits.append(delay)
    assert waits == [1, 2, 4, 8, 16, 30, 30, 30]
    assert schedule.reopened("hv1") == 8
    assert schedule.waiting() == set() and schedule.wait_time(now) is None


def test_a_second_loss_report_does_not_reset_the_backoff():
    schedule = ReconnectSchedule(fixed_delay)
    schedule.lost("hv1", 0.0)
    schedule.failed("hv1", 0.0)
    schedule.failed("hv1", 1.0)  # next at 3.0
    assert not schedule.lost("hv1", 1.5, "keepalive timed out")
    assert schedule.due(2.9) == [] and schedule.due(3.0) == ["hv1"]


def test_the_real_delay_is_jittered_below_a_capped_doubling():
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (40, 30.0)):
        draws = {reconnect_delay(attempt) for _ in range(50)}
        assert all(ceiling * (1 - JITTER) <= d <= ceiling for d in draws), (attempt, draws)
        assert len(draws) > 1, "no jitter: many daemons would reconnect in step"


# ------------------------------------------------------------------------------------- the watchers


def test_a_first_connection_is_opened_by_the_pass_without_a_drift_pass(rig):
    watchers, _, hosts, drift = rig
    watchers.ensure(manifests(hv1="qemu+ssh://hv1/system", sb="sandbox:/tmp/sb.xml"), ["hv1", "sb"])
    assert list(hosts.made) == ["hv1"], "a sandbox host has no event connection"
    assert hosts.last("hv1").open and drift == []
    hosts.last("hv1").on_event("web", "stopped")
    assert drift == ["hv1"]


def test_a_lost_connection_is_reopened_with_backoff_then_a_drift_pass(rig):
    watchers, clock, hosts, drift = rig
    watchers.ensure(manifests(hv1="qemu+ssh://hv1/system"), ["hv1"])
    events = hosts.last("hv1")
    events.up = False
    events.die()
    assert watchers.waiting() == {"hv1"}
    watchers.reconnect_due()  # at once: refused
    assert events.opens == 2 and drift == []
    clock.now += 0.9
    watchers.reconnect_due()
    assert events.opens == 2, "retried before its backoff (1s) was over"
    clock.now += 0.1
    watchers.reconnect_due()  # refused again: next in 2s
    clock.now += 1.9
    watchers.reconnect_due()
    assert events.opens == 3
    events.up = True
    clock.now += 0.1
    watchers.reconnect_due()
    assert events.opens == 4 and events.open
    assert drift == ["hv1"], "changes made while the connection was down were not looked for"
    assert watchers.waiting() == set()
    clock.now += 100
    watchers.reconnect_due()
    assert events.opens == 4 and drift == ["hv1"]


def test_a_pass_hands_a_dead_connection_to_the_reconnect_thread_instead_of_opening_it(rig):
    """The reconcile loop never waits on an unreachable host's event connection."""
    watchers, _, hosts, drift = rig
    watchers.ensure(manifests(hv1="qemu+ssh://hv1/system"), ["hv1"])
    events = hosts.last("hv1")
    events.open = False  # died without a close callback (found by isAlive)
    watchers.ensure(manifests(hv1="qemu+ssh://hv1/system"), ["hv1"])
    assert events.opens == 1, "the pass reopened the connection itself"
    assert watchers.waiting() == {"hv1"}
    watchers.reconnect_due()
    assert events.opens == 2 and drift == ["hv1"]


def test_a_first_connection_that_fails_is_retried_in_the_background(rig):
    watchers, clock, hosts, drift = rig
    hosts.up["hv1"] = False
    watchers.ensure(manifests(hv1="qemu+ssh://hv1/system"), ["hv1"])
    events = hosts.last("hv1")
    assert events.opens == 1 and watchers.waiting() == {"hv1"}
    watchers.reconnect_due()
    assert events.opens == 1, "the first failure already counts: the next try waits 1s"
    events.up = True
    clock.now += 1
    watchers.reconnect_due()
    assert events.open and drift == ["hv1"]


def test_a_host_with_a_new_address_or_no_longer_kept_is_closed(rig):
    watchers, _, hosts, _ = rig
    watchers.ensure(manifests(hv1="qemu+ssh://hv1/system", hv2="qemu+ssh://hv2/system"), ["hv1", "hv2"])
    first, other = hosts.last("hv1"), hosts.last("hv2")
    other.die()
    watchers.ensure(manifests(hv1="qemu+tls://hv1.example/system"), ["hv1"])
    # closed in threads of their own (a silent host's close must not hold up the loop)
    deadline = time.monotonic() + 10
    while not (first.closed and other.closed) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert first.closed and other.closed
    assert hosts.last("hv1").host.spec.uri == "qemu+tls://hv1.example/system" and hosts.last("hv1").open
    assert watchers.waiting() == set(), "a host no longer kept is not reopened"


def test_closing_waits_for_no_silent_host(rig, monkeypatch):
    """The daemon's shutdown closes every event connection side by side, waiting CLOSE_WAIT in all:
    one to a host gone silent (its close waits for libvirt to give up) holds up neither the others'
    nor the shutdown."""
    watchers, _, hosts, _ = rig
    watchers.ensure(manifests(hv1="qemu+ssh://hv1/system", hv2="qemu+ssh://hv2/system"), ["hv1", "hv2"])
    release = threading.Event()
    hosts.last("hv1").close = lambda: release.wait(60)  # type: ignore[method-assign]
    monkeypatch.setattr(watchers_module, "CLOSE_WAIT", 0.1)
    closer = threading.Thread(target=watchers.close)
    closer.start()
    try:
        closer.join(30)
        assert not closer.is_alive(), "the shutdown waited for the silent host's close"
        assert hosts.last("hv2").closed
    finally:
        release.set()


def test_after_close_a_loss_is_ignored(rig):
    watchers, _, hosts, drift = rig
    watchers.ensure(manifests(hv1="qemu+ssh://hv1/system"), ["hv1"])
    events = hosts.last("hv1")
    watchers.close()
    assert events.closed
    events.die()
    watchers.reconnect_due()
    assert watchers.waiting() == set() and drift == []


def test_the_reconnect_thread_reopens_on_its_own():
    """With the thread running, a loss is repaired and followed by a drift pass with no pass at all."""
    hosts, drift = Hosts(), []
    reopened = threading.Event()

    def on_drift(host: str) -> None:
        drift.append(host)
        reopened.set()

    watchers = DomainWatchers(hosts, on_drift, schedule=ReconnectSchedule(lambda attempt: 0.05))
    try:
        watchers.ensure(manifests(hv1="qemu+ssh://hv1/system"), ["hv1"])
        events = hosts.last("hv1")
        events.up = False
        started = time.monotonic()
        events.die()
        time.sleep(0.2)
        assert events.opens >= 3, "the thread does not keep trying"
        events.up = True
        assert reopened.wait(5), "the thread never reopened the connection"
        assert drift == ["hv1"] and time.monotonic() - started < 5
        assert any(t.name == "events-reconnect" for t in threading.enumerate())
    finally:
        watchers.close()
    assert not any(t.name == "events-reconnect" for t in threading.enumerate())
