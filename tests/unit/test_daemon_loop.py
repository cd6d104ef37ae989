"""The daemon's passes in-process, over in-memory hosts: retries, errors, status, logging."""

from __future__ import annotations

import logging
import sys
import threading
import time

import pytest

from reconciler.daemon import Trigger
from reconciler.errors import PermanentHostError, ReconcilerError, SourceError, TemporaryHostError
from tests.daemon_helpers import in_process_daemon, retry_timers, settle

START = [(Trigger.START, None)]


pytestmark = pytest.mark.usefixtures("no_timers_left")  # tests/unit/conftest.py


@pytest.fixture
def new_timers():
    before = retry_timers()
    return lambda: retry_timers() - before


def host_status(daemon, name: str = "hv1") -> dict:
    return daemon.status.document()["hosts"][name]


def sample(daemon, name: str, **labels: str) -> float:
    return daemon.metrics.registry.get_sample_value(name, labels) or 0.0


# ------------------------------------------------------------------------------ retry is not drift


def test_a_retry_after_a_temporary_error_is_reported_as_a_retry_not_as_drift(tmp_path):
    daemon, _source, hosts = in_process_daemon(tmp_path)
    hosts.fail("hv1", TemporaryHostError("hv1", "connection reset"))
    settle(daemon, START)
    assert host_status(daemon)["result"] == "error"

    settle(daemon, [(Trigger.RETRY, "hv1")])
    status = host_status(daemon)
    assert status["result"] == "applied" and status["appliedRevision"] == "r1"
    assert not status["message"].startswith("drift corrected"), status["message"]
    assert sample(daemon, "virt_reconcile_drift_corrections_total", host="hv1") == 0
    assert sample(daemon, "virt_reconcile_retries_total", host="hv1") == 1


def test_drift_is_still_corrected_and_counted(tmp_path):
    daemon, _source, hosts = in_process_daemon(tmp_path)
    settle(daemon, START)
    hosts.host("hv1").stop("web-hv1", 0)  # someone stopped it by hand
    settle(daemon, [(Trigger.DRIFT, "hv1")])
    status = host_status(daemon)
    assert status["message"] == "drift corrected: 1 action(s): start web-hv1"
    assert sample(daemon, "virt_reconcile_drift_corrections_total", host="hv1") == 1
    assert sample(daemon, "virt_reconcile_retries_total", host="hv1") == 0


def test_a_host_retry_reconciles_that_host_only_without_fetching(tmp_path):
    daemon, source, hosts = in_process_daemon(tmp_path, hosts=("hv1", "hv2"))
    hosts.fail("hv1", TemporaryHostError("hv1", "timeout"))
    settle(daemon, START)
    fetched, hosts.writes[:] = source.updates, []
    settle(daemon, [(Trigger.RETRY, "hv1")])
    assert source.updates == fetched
    assert set(hosts.writes) == {"hv1"}  # hv2 may be looked at (a move?), never changed


# --------------------------------------------------------------------------- one retry per target


def test_failing_again_and_again_keeps_one_pending_retry_per_host(tmp_path, new_timers):
    daemon, _source, hosts = in_process_daemon(tmp_path, hosts=("hv1", "hv2"))
    hosts.fail("hv1", TemporaryHostError("hv1", "timeout"), times=5)
    hosts.fail("hv2", TemporaryHostError("hv2", "timeout"), times=1)
    settle(daemon, START)
    assert len(new_timers()) == 2  # one per host
    for _ in range(4):
        settle(daemon, [(Trigger.RETRY, "hv1")])
    assert {timer.name for timer in new_timers()} >= {"retry hv1"}  # hv2's may have fired since
    assert len([timer for timer in new_timers() if "hv2" not in timer.name]) == 1

    settle(daemon, [(Trigger.RETRY, "hv1"), (Trigger.RETRY, "hv2")])  # both succeed now
    assert host_status(daemon, "hv1")["result"] == host_status(daemon, "hv2")["result"] == "applied"
    assert new_timers() == set()


def test_failing_fetches_keep_one_pending_retry(tmp_path, new_timers):
    daemon, source, _hosts = in_process_daemon(tmp_path)
    source.fail_with = [SourceError("git: connection refused")] * 3
    for _ in range(3):
        settle(daemon, [(Trigger.WEBHOOK, None)])
    assert len(new_timers()) == 1
    assert daemon.status.document()["source"]["message"].startswith("fetch failed (attempt 3)")
    settle(daemon, [(Trigger.RETRY, None)])
    assert new_timers() == set()
    assert host_status(daemon)["result"] == "applied"


# ------------------------------------------------------------------------ retryable or permanent


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (TemporaryHostError("hv1", "connection lost"), True),
        (PermanentHostError("hv1", "operation not supported"), False),
    ],
)
def test_only_a_retryable_connect_error_is_retried(tmp_path, new_timers, error, retried):
    daemon, _source, hosts = in_process_daemon(tmp_path)
    hosts.fail("hv1", error, times=2)
    settle(daemon, START)
    settle(daemon, [(Trigger.RETRY, "hv1")])  # a second failure: the next retry is seconds away
    assert host_status(daemon)["result"] == "error"
    assert str(error) in host_status(daemon)["message"]
    assert len(new_timers()) == (1 if retried else 0)


@pytest.mark.parametrize(
    ("method", "error", "retried"),
    [
        ("start", TemporaryHostError("hv1", "libvirtd busy"), True),
        ("define", PermanentHostError("hv1", "XML refused"), False),
    ],
)
def test_an_action_error_is_retried_only_when_retryable(tmp_path, new_timers, method, error, retried):
    daemon, _source, hosts = in_process_daemon(tmp_path)
    hosts.host("hv1").broken[method] = error
    settle(daemon, START)
    hosts.host("hv1").broken[method] = error
    settle(daemon, [(Trigger.RETRY, "hv1")])  # a second failure: the next retry is seconds away
    assert host_status(daemon)["result"] == "error"
    assert len(new_timers()) == (1 if retried else 0)


def test_a_conflict_waits_for_a_new_revision(tmp_path, new_timers):
    daemon, _source, hosts = in_process_daemon(tmp_path)
    hosts.host("hv1").define("<domain type='kvm'><name>web-hv1</name></domain>")  # not ours
    settle(daemon, START)
    assert "conflict" in host_status(daemon)["message"]
    assert new_timers() == set()


def test_a_fetch_error_that_no_retry_fixes_waits_for_the_next_trigger(tmp_path, new_timers):
    daemon, source, _hosts = in_process_daemon(tmp_path)
    source.fail_with = [ReconcilerError("no such branch")]
    settle(daemon, START)
    assert "no such branch" in daemon.status.document()["source"]["message"]
    assert new_timers() == set()


def test_after_the_source_recovers_every_host_is_reconciled_again(tmp_path):
    daemon, source, _hosts = in_process_daemon(tmp_path)
    settle(daemon, START)
    source.fail_with = [SourceError("git: timeout")]
    settle(daemon, [(Trigger.POLL, None)])
    assert host_status(daemon)["message"].startswith("fetch failed")
    settle(daemon, [(Trigger.POLL, None)])  # the same revision, but the error is over
    assert host_status(daemon)["result"] == "unchanged"
    assert daemon.status.document()["source"]["message"] == ""


# ------------------------------------------------------------------------------------- status


def test_status_readers_never_see_half_an_update(tmp_path):
    daemon, source, _hosts = in_process_daemon(tmp_path, hosts=tuple(f"hv{i}" for i in range(40)), domains=())
    settle(daemon, START)
    torn: list[set[str]] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set() and not torn:
            messages = {host["message"] for host in daemon.status.document()["hosts"].values()}
            if len(messages) > 1:
                torn.append(messages)
            time.sleep(0)  # let the writer have the lock now and then

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(50):  # each failed fetch puts a new message on every host
            source.fail_with.append(SourceError("git: unreachable"))
            settle(daemon, [(Trigger.WEBHOOK, None)])
            if torn:
                break
    finally:
        done.set()
        reader.join()
        sys.setswitchinterval(interval)
    assert not torn, f"one /status document mixed {sorted(torn[0])[:2]}"


def test_the_status_survives_a_restart_and_is_written_whole(tmp_path):
    daemon, _source, _hosts = in_process_daemon(tmp_path)
    settle(daemon, START)
    again, _source, _hosts = in_process_daemon(tmp_path)
    assert host_status(again) == host_status(daemon)
    assert [p.name for p in (tmp_path / "state").iterdir() if p.name.startswith(".")] == []


# ------------------------------------------------------------------------------------- logging


def test_each_event_is_one_line_on_the_daemon_logger(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="virt_reconcile")
    daemon, source, hosts = in_process_daemon(tmp_path, hosts=("hv1", "hv2"))
    settle(daemon, START)
    hosts.fail("hv2", PermanentHostError("hv2", "operation not supported"))
    settle(daemon, [(Trigger.DRIFT, "hv2")])
    source.fail_with = [SourceError("git: connection refused")]
    settle(daemon, [(Trigger.WEBHOOK, None)])
    lines = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    lines[:2] = sorted(lines[:2])  # each host's lane logs its own line: in either order
    assert lines[0] == (
        "virt_reconcile.daemon.loop",
        "INFO",
        "hv1: applied at r1 (new revision): 2 action(s): define web-hv1, start web-hv1",
    )
    assert lines[1][2].startswith("hv2: applied at r1 (new revision)")
    assert lines[2][1] == "WARNING" and lines[2][2].startswith("hv2: error at r1 (drift): hv2:")
    assert lines[2][2].endswith("; waiting for a new revision")
    assert lines[3][1] == "WARNING" and lines[3][2].startswith("fetch failed (attempt 1): git: connection")
    assert len(lines) == 4 and all("\n" not in line for _, _, line in lines)
