"""The daemon never dies of what a revision holds, honours a stop during a slow load, and keeps its
threads bounded however often hosts and the source fail: the daemon runs in-process, over in-memory
hosts, its loop in a thread of its own."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from reconciler.daemon import Trigger, loader, loop
from reconciler.daemon.http import exposure_warning
from reconciler.errors import SourceError, TemporaryHostError
from tests.daemon_helpers import in_process_daemon, retry_timers

pytestmark = pytest.mark.usefixtures("no_timers_left")  # tests/unit/conftest.py


@contextmanager
def running(daemon) -> Iterator[threading.Thread]:
    """``daemon.run()`` in a thread until the block ends; it must then stop within seconds."""
    thread = threading.Thread(target=daemon.run, name="daemon-under-test", daemon=True)
    thread.start()
    wait_until(lambda: daemon._http is not None, "the HTTP endpoints")
    try:
        yield thread
    finally:
        daemon.stop.set()
        thread.join(10)
        assert not thread.is_alive(), "the daemon did not stop"


def wait_until(check: Callable[[], object], what: str | Callable[[], str], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, (
            f"timed out waiting for {what if isinstance(what, str) else what()}"
        )
        time.sleep(0.02)


def status(daemon) -> dict:
    """``/status`` over HTTP, as an operator reads it."""
    host, port = daemon.address
    with urllib.request.urlopen(f"http://{host}:{port}/status", timeout=5) as response:
        return json.loads(response.read())


def host_reaches(daemon, check: Callable[[dict], bool], host: str = "hv1") -> dict:
    found: list[dict] = []

    def reached() -> bool:
        current = status(daemon)["hosts"].get(host, {})
        found[:] = [current]
        return bool(current) and check(current)

    wait_until(reached, lambda: f"{host} to reach the expected status (last: {found})")
    return found[0]


class Breakable:
    """Stands in for a function of the loop: raises ``error`` while broken, else calls the real one."""

    def __init__(self, real: Callable, error: BaseException) -> None:
        self.real, self.error, self.broken, self.calls = real, error, True, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.broken:
            raise self.error
        return self.real(*args, **kwargs)


ERRORS = [
    RecursionError("maximum recursion depth exceeded while calling a Python object"),
    MemoryError(),
    OverflowError("cannot convert Infinity to integer"),
    ValueError("invalid literal for int() with base 10: '1e999'"),
]


# ------------------------------------------------------------------ an error in a revision is its own


@pytest.mark.parametrize("error", ERRORS, ids=lambda err: type(err).__name__)
def test_whatever_loading_a_revision_raises_is_that_revisions_error(tmp_path, monkeypatch, caplog, error):
    caplog.set_level(logging.INFO, logger="virt_reconcile")
    daemon, source, hosts = in_process_daemon(tmp_path)
    load = Breakable(loader.load_manifests, error)
    load.broken = False
    monkeypatch.setattr(loader, "load_manifests", load)
    with running(daemon) as thread:
        host_reaches(daemon, lambda h: h["result"] == "applied")
        load.broken, source.revision, writes = True, "r2", len(hosts.writes)
        daemon.trigger(Trigger.WEBHOOK)
        failed = host_reaches(daemon, lambda h: h["revision"] == "r2")
        assert failed["result"] == "error" and failed["appliedRevision"] == "r1"  # the last good stays
        assert failed["message"].startswith(f"manifests not loaded at r2: {type(error).__name__}")
        assert len(hosts.writes) == writes  # nothing applied
        [line] = [r.getMessage() for r in caplog.records if "manifests not loaded" in r.getMessage()]
        assert "\n" not in line

        loads = load.calls  # routine polls of the same revision load nothing again: no retry storm
        for _ in range(3):
            daemon.trigger(Trigger.POLL)
        time.sleep(0.5)
        assert load.calls == loads and thread.is_alive() and not daemon.retries.pending()

        load.broken, source.revision = False, "r3"
        daemon.trigger(Trigger.WEBHOOK)
        host_reaches(daemon, lambda h: h["appliedRevision"] == "r3")


@pytest.mark.parametrize("error", ERRORS, ids=lambda err: type(err).__name__)
def test_whatever_planning_a_revision_raises_is_that_revisions_error(tmp_path, monkeypatch, error):
    daemon, source, hosts = in_process_daemon(tmp_path)
    reconcile = Breakable(loop.reconcile, error)
    monkeypatch.setattr(loop, "reconcile", reconcile)
    with running(daemon) as thread:
        failed = host_reaches(daemon, lambda h: h["result"] == "error")
        assert failed["message"].startswith(f"reconcile failed at r1: {type(error).__name__}")
        assert hosts.writes == [] and thread.is_alive()
        reconcile.broken, source.revision = False, "r2"
        daemon.trigger(Trigger.WEBHOOK)
        host_reaches(daemon, lambda h: h["appliedRevision"] == "r2")


def test_an_infinite_overcommit_ratio_does_not_end_the_daemon(tmp_path):
    """Found by hand: ``ratio: .inf`` raised OverflowError in the policy and killed the daemon
    (whether the manifests now refuse it or the policy copes, the daemon goes on)."""
    daemon, source, _hosts = in_process_daemon(tmp_path)
    manifests = source.manifests / "all.yaml"
    manifests.write_text(
        manifests.read_text().replace(
            "  prune: false\n", "  prune: false\n  overcommit: {cpu: {ratio: .inf}}\n"
        )
    )
    assert ".inf" in manifests.read_text()
    with running(daemon) as thread:
        wait_until(lambda: status(daemon)["reconciledRevision"] == "r1", "a pass at r1")
        source.revision = "r2"
        daemon.trigger(Trigger.WEBHOOK)
        wait_until(lambda: status(daemon)["reconciledRevision"] == "r2", "a pass at r2")
        assert thread.is_alive()


def test_a_revision_that_fails_before_any_host_is_known_is_reported(tmp_path, monkeypatch):
    daemon, _source, _hosts = in_process_daemon(tmp_path)
    monkeypatch.setattr(loader, "load_manifests", Breakable(loader.load_manifests, RecursionError("deep")))
    with running(daemon):
        wait_until(lambda: status(daemon)["revisionError"], "the revision's error")
        document = status(daemon)
    assert document["revisionError"] == "manifests not loaded at r1: RecursionError: deep"
    assert document["hosts"] == {} and document["reconciledRevision"] == "r1"


def test_a_fetch_that_raises_a_bug_is_the_sources_error(tmp_path):
    daemon, source, _hosts = in_process_daemon(tmp_path)
    source.fail_with = [ValueError("a bug in the git adapter")]
    with running(daemon) as thread:
        wait_until(lambda: status(daemon)["source"]["message"], "the source's error")
        assert status(daemon)["source"]["message"] == "fetch failed: ValueError: a bug in the git adapter"
        daemon.trigger(Trigger.WEBHOOK)
        host_reaches(daemon, lambda h: h["result"] == "applied")
        assert thread.is_alive()


def test_a_status_file_that_cannot_be_written_does_not_end_the_loop(tmp_path, monkeypatch, caplog):
    daemon, source, _hosts = in_process_daemon(tmp_path)
    save = Breakable(daemon.status.save, OSError(28, "No space left on device"))
    monkeypatch.setattr(daemon.status, "save", save)
    with running(daemon) as thread:
        wait_until(lambda: any("pass failed" in r.getMessage() for r in caplog.records), "the log line")
        assert thread.is_alive()
        save.broken, source.revision = False, "r2"
        daemon.trigger(Trigger.WEBHOOK)
        host_reaches(daemon, lambda h: h["appliedRevision"] == "r2")
    [line] = [r.getMessage() for r in caplog.records if "pass failed" in r.getMessage()]
    assert line == "pass failed: OSError: [Errno 28] No space left on device"


# ------------------------------------------------------------------------------- a slow load


class SlowLoad:
    """A load that blocks until released (a YAML file that takes forever, a stuck file system)."""

    def __init__(self) -> None:
        self.release, self.started = threading.Event(), threading.Event()
        self.real = loader.load_manifests

    def __call__(self, *args, **kwargs):
        self.started.set()
        self.release.wait(30)
        return self.real(*args, **kwargs)


def loader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "load-manifests" and t.is_alive()]


def test_a_load_past_its_budget_is_that_revisions_error_and_costs_one_thread(tmp_path, monkeypatch):
    daemon, source, _hosts = in_process_daemon(tmp_path, load_timeout=0.3)
    slow = SlowLoad()
    monkeypatch.setattr(loader, "load_manifests", slow)
    try:
        with running(daemon) as thread:
            wait_until(lambda: status(daemon)["revisionError"], "the revision's error")
            error = status(daemon)["revisionError"]
            assert error == "manifests not loaded at r1: loading the manifests took longer than 0.3s"
            source.revision = "r2"  # the first load still hangs: the next is refused, no second thread
            daemon.trigger(Trigger.WEBHOOK)
            wait_until(lambda: status(daemon)["reconciledRevision"] == "r2", "a pass at r2")
            assert "an earlier load of the manifests is still running" in status(daemon)["revisionError"]
            assert len(loader_threads()) == 1 and thread.is_alive()
            slow.release.set()
            wait_until(lambda: not loader_threads(), "the slow load to end")
            source.revision = "r3"
            daemon.trigger(Trigger.WEBHOOK)
            host_reaches(daemon, lambda h: h["appliedRevision"] == "r3")
    finally:
        slow.release.set()


def test_a_stop_during_a_slow_load_ends_the_daemon_at_once(tmp_path, monkeypatch):
    """What SIGTERM's handler does (set ``stop``) is honoured while a load hangs."""
    daemon, _source, _hosts = in_process_daemon(tmp_path)  # the default budget: a minute
    slow = SlowLoad()
    monkeypatch.setattr(loader, "load_manifests", slow)
    thread = threading.Thread(target=daemon.run, daemon=True)
    try:
        thread.start()
        assert slow.started.wait(10)
        stopped = time.monotonic()
        daemon.stop.set()
        thread.join(5)
        assert not thread.is_alive() and time.monotonic() - stopped < 2
    finally:
        slow.release.set()
        daemon.stop.set()
        thread.join(10)


# ------------------------------------------------------------------------------ triggers, threads


def test_a_resync_shorter_than_the_interval_is_honoured(tmp_path):
    daemon, _source, _hosts = in_process_daemon(tmp_path, interval=3600.0, resync=0.2)
    poller = threading.Thread(target=daemon._poll, daemon=True)
    poller.start()
    try:
        kinds = [daemon.triggers.get(timeout=2)[0] for _ in range(2)]
    finally:
        daemon.stop.set()
        poller.join(5)
    assert kinds == [Trigger.RESYNC, Trigger.RESYNC]


def test_broken_hosts_and_a_failing_source_keep_the_threads_bounded(tmp_path):
    """Two hosts and the source fail again and again with a short backoff: one timer per target at
    most, and the thread count stays flat however many retries run."""
    daemon, source, hosts = in_process_daemon(
        tmp_path, hosts=("hv1", "hv2"), interval=0.05, retry_base=0.01, retry_cap=0.04
    )
    for name in ("hv1", "hv2"):
        hosts.fail(name, TemporaryHostError(name, "connection refused"), times=10_000)
    with running(daemon) as thread:
        host_reaches(daemon, lambda h: h["result"] == "error", "hv2")
        baseline = threading.active_count()
        source.fail_with = [SourceError("git: connection refused")] * 10_000
        most_threads = most_timers = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            most_threads = max(most_threads, threading.active_count())
            most_timers = max(most_timers, len(retry_timers()))
            time.sleep(0.01)
        assert thread.is_alive()
    retried = hosts.connects.count("hv1")
    assert retried > 20 and source.updates > 20, (retried, source.updates)  # the test did retry
    assert most_timers <= 3  # hv1, hv2, the source
    # beyond the baseline: a timer being replaced lives on for a moment beside its successor, and a
    # pass may be loading its manifests; a leak would add a thread per retry, some hundred here
    assert most_threads <= baseline + 5, (baseline, most_threads)


def test_listening_beyond_loopback_is_named_in_a_warning():
    assert exposure_warning("127.0.0.1", webhook=True) is None
    assert exposure_warning("::1", webhook=False) is None
    assert exposure_warning("localhost", webhook=False) is None
    warning = exposure_warning("0.0.0.0", webhook=True)
    assert warning is not None
    assert "GET /healthz, GET /metrics, GET /status, POST /hooks/git (HMAC-signed)" in warning
    assert "POST" not in (exposure_warning("10.0.0.5", webhook=False) or "POST")
    assert exposure_warning("hv1.example.com", webhook=False) is not None


def test_the_warning_is_logged_at_start(tmp_path, monkeypatch, caplog):
    """The address itself stays loopback here (tests never listen beyond it): the check is faked."""
    seen: list[tuple[str, bool]] = []
    monkeypatch.setattr(
        loop, "exposure_warning", lambda host, webhook: seen.append((host, webhook)) or "exposed"
    )
    daemon, _source, _hosts = in_process_daemon(tmp_path)
    with running(daemon):
        pass
    assert seen == [("127.0.0.1", False)]
    assert ("virt_reconcile.daemon.loop", logging.WARNING, "exposed") in caplog.record_tuples
