"""The daemon and hosts whose changes wait on purpose: a host outside its sync windows, or suspended,
is reported as such (not "unchanged"), keeps its applied revision, shows in the history, is notified
(a commit status "pending") and logged once; the host is woken when its window opens. In-process
daemons over in-memory hosts, the clock set by the test."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from reconciler.daemon import Trigger
from reconciler.daemon.decision import Reason
from reconciler.daemon.notices import Event, Notice, Notifications, github_status, parse_receiver
from reconciler.daemon.wakeups import SLACK_SECONDS, Wakeups, next_boundary
from reconciler.spec.syncwindows import SyncWindow
from tests.daemon_helpers import in_process_daemon, settle
from tests.helpers import domain_yaml, host_yaml
from tests.notify_helpers import LocalReceiver

START = [(Trigger.START, None)]
OUTSIDE = datetime(2030, 1, 1, 1, 30, tzinfo=UTC)  # the window below opens at 02:00 for an hour
INSIDE = datetime(2030, 1, 1, 2, 0, 30, tzinfo=UTC)
WINDOW = "  syncWindows:\n  - {kind: allow, schedule: '0 2 * * *', duration: 1h}\n"
SUSPENDED = "metadata: {name: hv1, annotations: {virt-reconcile.dev/suspend: 'true'}}"
pytestmark = pytest.mark.usefixtures("no_timers_left")  # tests/unit/conftest.py


class Clock:
    """The time the daemon judges sync windows at, set by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def receiver() -> Iterator[LocalReceiver]:
    local = LocalReceiver()
    yield local
    local.close()


def commit(source, revision: str, *documents: str) -> None:
    (source.manifests / "all.yaml").write_text("---\n".join(documents))
    source.revision = revision


def windowed(source, revision: str, *domains: str) -> None:
    """The manifests at ``revision``: hv1 with an allow window at 02:00, and ``domains``."""
    commit(source, revision, host_yaml("hv1") + WINDOW, *(domain_yaml(name, host="hv1") for name in domains))


def window(kind: str, schedule: str, duration: str = "1h") -> SyncWindow:
    return SyncWindow.model_validate({"kind": kind, "schedule": schedule, "duration": duration})


def test_a_deferred_host_is_deferred_not_unchanged_and_applies_when_woken_in_its_window(
    tmp_path, receiver, caplog
):
    caplog.set_level(logging.INFO, logger="virt_reconcile")
    clock = Clock(OUTSIDE)
    notify = Notifications((parse_receiver(receiver.url),), backoff=0.01)
    daemon, source, hosts = in_process_daemon(tmp_path, clock=clock, notify=notify)
    try:
        settle(daemon, START)  # no window yet: applied at r1
        windowed(source, "r2", "web-hv1", "db-hv1")
        settle(daemon, [(Trigger.WEBHOOK, None)])
        host = daemon.status.document()["hosts"]["hv1"]
        assert (host["result"], host["revision"], host["appliedRevision"]) == ("deferred", "r2", "r1")
        assert host["message"] == (
            "2 action(s) wait (define db-hv1, start db-hv1): outside sync window allow 0 2 * * * for 1h; "
            "next opens 2030-01-01T02:00Z"
        )
        assert host["domains"]["db-hv1"]["sync"] == "outOfSync" and "db-hv1" not in hosts.host("hv1").domains
        entry = daemon.status.document()["history"][0]
        assert (entry["result"], entry["revision"], entry["count"]) == ("deferred", "r2", 1)
        assert daemon.wakeups.pending() == {"hv1": datetime(2030, 1, 1, 2, 0, tzinfo=UTC)}

        settle(daemon, [(Trigger.RESYNC, None)])  # the same deferral: merged, not logged or sent again
        assert [(e["result"], e["count"]) for e in daemon.status.document()["history"][:2]] == [
            ("deferred", 2),
            ("applied", 1),
        ]
        clock.now = datetime(2030, 1, 1, 1, 59, 59, tzinfo=UTC)  # the wake-up is a second or two away
        settle(daemon, [(Trigger.DRIFT, "hv1")])
        clock.now = INSIDE
        woken = daemon.triggers.get(timeout=30)  # waits for the timer, however slow the machine
        assert woken == (Trigger.WINDOW, "hv1")
        settle(daemon, [woken])
        host = daemon.status.document()["hosts"]["hv1"]
        assert (host["result"], host["appliedRevision"]) == ("applied", "r2")
        assert "db-hv1" in hosts.host("hv1").domains and daemon.wakeups.pending() == {}
        assert daemon.status.document()["history"][0]["trigger"] == Reason.WINDOW.value

        events = [(r.json["event"], r.json["revision"]) for r in receiver.wait_for(3)]
        assert events == [("applied", "r1"), ("deferred", "r2"), ("applied", "r2")]
        said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("hv1: deferred")]
        assert len(said) == 1 and said[0].startswith("hv1: deferred at r2 (new revision): 2 action(s) wait")
    finally:
        daemon.close()


def test_a_deferred_host_with_nothing_to_change_is_unchanged_and_not_woken(tmp_path):
    daemon, source, _hosts = in_process_daemon(tmp_path, clock=Clock(OUTSIDE))
    settle(daemon, START)
    windowed(source, "r2", "web-hv1")  # the same domain: nothing waits
    settle(daemon, [(Trigger.WEBHOOK, None)])
    host = daemon.status.document()["hosts"]["hv1"]
    assert (host["result"], host["appliedRevision"]) == ("unchanged", "r2")
    assert host["deferred"].startswith("outside sync window") and daemon.wakeups.pending() == {}


def test_a_suspended_host_is_suspended_keeps_its_applied_revision_and_is_pending_on_github(tmp_path):
    daemon, source, _hosts = in_process_daemon(tmp_path)
    settle(daemon, START)
    document = host_yaml("hv1").replace("metadata: {name: hv1}", SUSPENDED)
    commit(source, "r2", document, domain_yaml("web-hv1", host="hv1", vcpus=2), domain_yaml("db", host="hv1"))
    settle(daemon, [(Trigger.WEBHOOK, None)])
    host = daemon.status.document()["hosts"]["hv1"]
    assert (host["result"], host["appliedRevision"], host["suspended"]) == ("suspended", "r1", True)
    assert host["message"] == 'the host is suspended (virt-reconcile.dev/suspend: "true")'
    assert daemon.status.document()["history"][0]["result"] == "suspended"
    assert daemon.metrics.registry.get_sample_value(
        "virt_reconcile_reconcile_results_total", {"host": "hv1", "result": "suspended"}
    )
    waiting = Notice(Event.SUSPENDED, "hv1", "r2", host["message"], "t")
    assert github_status(waiting)["state"] == "pending"
    assert github_status(Notice(Event.DEFERRED, "hv1", "r2", "m", "t"))["state"] == "pending"


# ------------------------------------------------------------------------------------- wake-ups


@pytest.mark.parametrize(
    ("windows", "now", "expected"),
    [
        ([window("allow", "0 2 * * *")], OUTSIDE, datetime(2030, 1, 1, 2, 0, tzinfo=UTC)),
        # two allow windows: the sooner opening
        (
            [window("allow", "0 2 * * *"), window("allow", "45 1 * * *", "5m")],
            OUTSIDE,
            datetime(2030, 1, 1, 1, 45, tzinfo=UTC),
        ),
        # a deny window open now: its closing (the allow window opening later is another boundary)
        (
            [window("deny", "0 1 * * *"), window("allow", "0 3 * * *")],
            OUTSIDE,
            datetime(2030, 1, 1, 2, 0, tzinfo=UTC),
        ),
        # a deny window not open now is no boundary: its opening never lets changes go
        ([window("deny", "0 4 * * *")], OUTSIDE, None),
        ([], OUTSIDE, None),
    ],
)
def test_the_next_boundary_is_the_first_moment_a_deferral_may_end(windows, now, expected):
    assert next_boundary(windows, now) == expected


def test_a_wake_up_replaces_the_hosts_last_and_fires_once_after_its_boundary():
    fired: list[str] = []
    wakeups = Wakeups(fired.append)
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert wakeups.at("hv1", datetime(2030, 1, 2, tzinfo=UTC), now) == 86400 + SLACK_SECONDS
    assert wakeups.at("hv1", now, now) == SLACK_SECONDS  # replaces the first: one per host
    assert wakeups.pending() == {"hv1": now}
    [timer] = [t for t in _timers() if t.name == "wake hv1"]
    timer.join(30)
    assert fired == ["hv1"] and wakeups.pending() == {}
    wakeups.at("hv2", datetime(2030, 1, 2, tzinfo=UTC), now)
    wakeups.at("hv3", datetime(2030, 1, 2, tzinfo=UTC), now)
    cancelled = [t for t in _timers() if t.name in ("wake hv2", "wake hv3")]
    wakeups.forget("hv2")
    assert set(wakeups.pending()) == {"hv3"}
    wakeups.cancel_all()
    for timer in cancelled:
        timer.join(30)  # a cancelled timer's thread ends without firing
    assert wakeups.pending() == {} and fired == ["hv1"] and len(cancelled) == 2


def _timers():
    import threading

    return [t for t in threading.enumerate() if isinstance(t, threading.Timer) and t.is_alive()]
