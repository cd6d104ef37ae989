"""The daemon's host lanes (daemon.lanes, daemon.loop): each host reconciled by a thread of its own,
newest work replacing waiting work, a move's two hosts reconciled together, lanes that outlive a
failing pass and end with the daemon.

Concurrency is made deterministic with events (a pass blocks until the test releases it); the only
waits with a limit are for things that must happen, far above what they take.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from lxml import etree

from reconciler.daemon import Trigger
from reconciler.daemon.decision import Reason
from reconciler.daemon.lanes import HostLanes, LaneJob
from reconciler.spec.labels import Selector
from reconciler.spec.manifests import ManifestSet, load_manifests
from tests.daemon_helpers import FakeHosts, FakeHypervisor, in_process_daemon, settle
from tests.helpers import domain_yaml, host_yaml

START = [(Trigger.START, None)]
WAIT = 10.0  # seconds to wait for what must happen (never reached when the test passes)
RELEASES: list[threading.Event] = []  # every blocked call's release: all set when a test ends


pytestmark = pytest.mark.usefixtures("no_timers_left")  # tests/unit/conftest.py


@pytest.fixture
def daemons() -> Iterator[Callable[..., tuple]]:
    """``in_process_daemon`` whose daemons are closed (lanes ended) when the test ends."""
    made = []

    def make(root: Path, **kwargs: object) -> tuple:
        made.append(in_process_daemon(root, **kwargs))
        return made[-1]

    yield make
    for release in RELEASES:
        release.set()  # a test that failed must not leave a lane blocked
    RELEASES.clear()
    for daemon, _source, _hosts in made:
        daemon.close()


def host_status(daemon, name: str) -> dict:
    return daemon.status.document()["hosts"].get(name, {})


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Wait for ``condition`` (it must come: the limit only turns a hang into a failure)."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


def block(hosts: FakeHosts, name: str, method: str) -> tuple[threading.Event, threading.Event]:
    """Make the host's ``method`` wait for ``release`` (once ``entered`` is set), every call."""
    hypervisor = hosts.host(name)
    original = getattr(hypervisor, method)
    entered, release = threading.Event(), threading.Event()
    RELEASES.append(release)

    def blocked(*args: object, **kwargs: object) -> object:
        entered.set()
        assert release.wait(WAIT), f"{name}.{method} was never released"
        return original(*args, **kwargs)

    setattr(hypervisor, method, blocked)
    return entered, release


def lane_threads(host: str) -> set[threading.Thread]:
    """The live lane threads of ``host`` (of every daemon still running in this process)."""
    return {thread for thread in threading.enumerate() if thread.name == f"lane-{host}"}


# ------------------------------------------------------------------------------ a lane per host


def test_a_host_blocked_in_its_pass_delays_no_other_host(tmp_path: Path, daemons):
    daemon, _source, hosts = daemons(tmp_path, hosts=("hv1", "hv2"))
    entered, release = block(hosts, "hv1", "define")
    daemon.reconcile_pass(START)
    assert entered.wait(WAIT)
    wait_until(lambda: host_status(daemon, "hv2").get("result") == "applied", "hv2 applied")
    assert host_status(daemon, "hv2")["appliedRevision"] == "r1"
    assert hosts.host("hv2").domains["web-hv2"].active
    wait_until(lambda: "hv2" not in daemon.lanes.busy(), "hv2's lane idle")
    assert "hv1" in daemon.lanes.busy()
    assert host_status(daemon, "hv1").get("result") != "applied"
    release.set()
    assert daemon.lanes.wait_idle(WAIT)
    assert host_status(daemon, "hv1")["result"] == "applied"


def test_work_for_a_busy_host_waits_and_the_newest_replaces_it(tmp_path: Path, daemons):
    daemon, source, hosts = daemons(tmp_path, hosts=("hv1", "hv2"))
    entered, release = block(hosts, "hv1", "define")
    daemon.reconcile_pass(START)
    assert entered.wait(WAIT)
    for revision in ("r2", "r3"):
        source.revision = revision
        daemon.reconcile_pass([(Trigger.WEBHOOK, None)])
    wait_until(lambda: host_status(daemon, "hv2").get("revision") == "r3", "hv2 at r3")
    release.set()
    assert daemon.lanes.wait_idle(WAIT)
    assert hosts.writes.count("hv1") == 2  # r1, then r3 once: r2 was replaced while it waited
    assert host_status(daemon, "hv1")["revision"] == "r3"
    assert host_status(daemon, "hv1")["result"] in ("applied", "unchanged")


def job(manifests: ManifestSet, revision: str = "r1") -> LaneJob:
    return LaneJob(manifests, revision, Reason.START)


@pytest.fixture
def two_hosts(tmp_path: Path) -> ManifestSet:
    (tmp_path / "hosts.yaml").write_text(host_yaml("hv1") + "---\n" + host_yaml("hv2", state="state/hv2.xml"))
    return load_manifests(tmp_path)


@pytest.fixture
def lanes() -> Iterator[Callable[..., HostLanes]]:
    """``HostLanes(work, parallel=N)``, stopped and joined when the test ends."""
    stop = threading.Event()
    made: list[HostLanes] = []

    def make(work: Callable[[Mapping[str, LaneJob]], frozenset[str]], parallel: int = 4) -> HostLanes:
        made.append(HostLanes(work, parallel=parallel, stop=stop))
        return made[-1]

    yield make
    stop.set()
    for lane in made:
        lane.close(WAIT)


def test_a_lane_runs_the_newest_job_once_after_its_pass(two_hosts: ManifestSet, lanes):
    ran: list[str] = []
    started, release = threading.Event(), threading.Event()

    def work(jobs: Mapping[str, LaneJob]) -> frozenset[str]:
        ran.append(jobs["hv1"].revision)
        started.set()
        assert release.wait(WAIT)
        return frozenset()

    host_lanes = lanes(work)
    host_lanes.submit("hv1", job(two_hosts, "r1"))
    assert started.wait(WAIT)
    for revision in ("r2", "r3", "r4"):
        host_lanes.submit("hv1", job(two_hosts, revision))
    assert host_lanes.busy() == {"hv1"}
    release.set()
    assert host_lanes.wait_idle(WAIT)
    assert ran == ["r1", "r4"]


def test_no_more_lanes_reconcile_at_once_than_host_parallel(two_hosts: ManifestSet, lanes):
    hv1_in, hv1_release, hv2_in = threading.Event(), threading.Event(), threading.Event()

    def work(jobs: Mapping[str, LaneJob]) -> frozenset[str]:
        if "hv1" in jobs:
            hv1_in.set()
            assert hv1_release.wait(WAIT)
        else:
            hv2_in.set()
        return frozenset()

    host_lanes = lanes(work, parallel=1)
    host_lanes.submit("hv1", job(two_hosts))
    assert hv1_in.wait(WAIT)
    host_lanes.submit("hv2", job(two_hosts))
    assert not hv2_in.wait(0.2)  # never true while hv1 holds the one slot (a short look, not a limit)
    hv1_release.set()
    assert hv2_in.wait(WAIT)
    assert host_lanes.wait_idle(WAIT)


def test_a_lane_runs_again_with_the_peers_its_pass_names(two_hosts: ManifestSet, lanes):
    runs: list[tuple[str, ...]] = []

    def work(jobs: Mapping[str, LaneJob]) -> frozenset[str]:
        runs.append(tuple(sorted(jobs)))
        return frozenset({"hv2"}) if len(jobs) == 1 else frozenset({"hv1", "hv2"})

    host_lanes = lanes(work)
    host_lanes.submit("hv1", job(two_hosts))
    assert host_lanes.wait_idle(WAIT)
    assert runs == [("hv1",), ("hv1", "hv2")]  # once more with the peer, and no further


def test_a_lane_lives_on_after_its_work_raises(two_hosts: ManifestSet, lanes, caplog):
    caplog.set_level(logging.ERROR, logger="virt_reconcile")
    ran: list[str] = []

    def work(jobs: Mapping[str, LaneJob]) -> frozenset[str]:
        ran.append(jobs["hv1"].revision)
        if len(ran) == 1:
            raise RuntimeError("a bug in the pass")
        return frozenset()

    host_lanes = lanes(work)
    host_lanes.submit("hv1", job(two_hosts, "r1"))
    assert host_lanes.wait_idle(WAIT)
    host_lanes.submit("hv1", job(two_hosts, "r2"))
    assert host_lanes.wait_idle(WAIT)
    assert ran == ["r1", "r2"]
    assert [r.getMessage() for r in caplog.records] == ["hv1: the lane's pass failed"]


def test_a_pass_that_raises_is_the_hosts_error_and_the_next_pass_runs(tmp_path: Path, daemons):
    daemon, _source, hosts = daemons(tmp_path, hosts=("hv1", "hv2"))
    hosts.host("hv1").broken["define"] = RuntimeError("not a host error")
    others = lane_threads("hv1")
    settle(daemon, START)
    [lane] = lane_threads("hv1") - others
    status = host_status(daemon, "hv1")
    assert status["result"] == "error"
    assert status["message"].startswith("reconcile failed at r1: RuntimeError: not a host error")
    assert host_status(daemon, "hv2")["result"] == "applied"
    settle(daemon, [(Trigger.DRIFT, "hv1")])
    assert host_status(daemon, "hv1")["result"] == "applied"
    assert lane.is_alive() and lane_threads("hv1") - others == {lane}


# ------------------------------------------------------------------------------------ a move


class Recorder(FakeHypervisor):
    """An in-memory host that writes each change into a journal shared by the hosts."""

    def __init__(self, name: str, journal: list[tuple[str, str, str]]) -> None:
        super().__init__(name)
        self.journal = journal

    def define(self, xml: str) -> None:
        super().define(xml)
        self.journal.append((self.name, "define", etree.fromstring(xml.encode()).findtext("name") or ""))

    def undefine(self, name: str, *, keep_nvram: bool = False) -> None:
        super().undefine(name, keep_nvram=keep_nvram)
        self.journal.append((self.name, "undefine", name))

    def start(self, name: str) -> None:
        super().start(name)
        self.journal.append((self.name, "start", name))

    def stop(self, name: str, timeout: float):
        outcome = super().stop(name, timeout)
        self.journal.append((self.name, "stop", name))
        return outcome


def recorded(hosts: FakeHosts) -> list[tuple[str, str, str]]:
    journal: list[tuple[str, str, str]] = []
    for name in ("hv1", "hv2"):
        hosts.hypervisors[name] = Recorder(name, journal)
    return journal


def move_web_hv1_to_hv2(root: Path, hv2_labels: str = "") -> None:
    documents = [host_yaml(name, state=f"state/{name}.xml") for name in ("hv1", "hv2")]
    if hv2_labels:
        documents[1] = documents[1].replace("{name: hv2}", f"{{name: hv2, labels: {hv2_labels}}}")
    documents += [domain_yaml("web-hv1", host="hv2"), domain_yaml("web-hv2", host="hv2")]
    (root / "manifests" / "all.yaml").write_text("---\n".join(documents))


def never_on_both(journal: list[tuple[str, str, str]], domain: str) -> None:
    defined: set[str] = set()
    for host, what, name in journal:
        if name == domain and what in ("define", "undefine"):
            (defined.add if what == "define" else defined.discard)(host)
            assert len(defined) <= 1, f"{domain} defined on {defined} at once: {journal}"


def test_a_domain_moved_in_git_moves_in_one_pass(tmp_path: Path, daemons, caplog):
    caplog.set_level(logging.INFO, logger="virt_reconcile")
    daemon, source, hosts = daemons(tmp_path, hosts=("hv1", "hv2"))
    journal = recorded(hosts)
    settle(daemon, START)
    journal.clear()
    move_web_hv1_to_hv2(tmp_path)
    source.revision = "r2"
    settle(daemon, [(Trigger.WEBHOOK, None)])
    assert "web-hv1" not in hosts.host("hv1").domains
    assert hosts.host("hv2").domains["web-hv1"].active
    moves = [(host, what) for host, what, name in journal if name == "web-hv1"]
    assert moves == [("hv1", "stop"), ("hv1", "undefine"), ("hv2", "define"), ("hv2", "start")]
    never_on_both(journal, "web-hv1")
    for name in ("hv1", "hv2"):
        assert host_status(daemon, name)["result"] == "applied", host_status(daemon, name)
        assert host_status(daemon, name)["appliedRevision"] == "r2"
    assert any("reconciling again with hv1" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("by", ["name", "label"])
def test_a_daemon_kept_to_some_hosts_never_writes_another_for_a_move(tmp_path: Path, daemons, by: str):
    """``--host hv2`` (or ``--selector role=mine``, which only hv2 has): hv1 is not this daemon's to
    change (another daemon, or a person, keeps it), so a domain moving from hv1 stays held, as
    ``apply --host hv2`` holds it; the lane must not widen the pass to hv1."""
    daemon, source, hosts = daemons(tmp_path, hosts=("hv1", "hv2"))
    settle(daemon, START)  # both hosts, as a daemon keeping both left them
    if by == "name":
        daemon.config.hosts = ["hv2"]
    else:
        daemon.config.selector = Selector.parse(["role=mine"])
    hosts.writes.clear()
    move_web_hv1_to_hv2(tmp_path, hv2_labels="{role: mine}")
    source.revision = "r2"
    settle(daemon, [(Trigger.WEBHOOK, None)])
    assert set(hosts.writes) == {"hv2"}, hosts.writes
    assert "web-hv1" in hosts.host("hv1").domains
    assert host_status(daemon, "hv1") == {}  # no longer this daemon's: dropped from /status


def test_a_daemon_with_a_selector_keeps_only_the_hosts_it_matches(tmp_path: Path, daemons):
    daemon, _source, hosts = daemons(tmp_path, hosts=("hv1", "hv2"))
    daemon.config.selector = Selector.parse(["role=mine"])
    move_web_hv1_to_hv2(tmp_path, hv2_labels="{role: mine}")
    settle(daemon, START)
    assert set(hosts.writes) == {"hv2"}
    assert set(hosts.host("hv2").domains) == {"web-hv1", "web-hv2"}
    assert list(daemon.status.document()["hosts"]) == ["hv2"]


# ------------------------------------------------------------------------------------ stopping


def test_close_returns_once_the_lanes_have_ended_their_pass(tmp_path: Path, daemons):
    daemon, _source, hosts = daemons(tmp_path, hosts=("hv1",))
    entered, release = block(hosts, "hv1", "define")
    others = lane_threads("hv1")
    daemon.reconcile_pass(START)
    assert entered.wait(WAIT)
    closed = threading.Event()

    def close() -> None:
        daemon.close()
        closed.set()

    closer = threading.Thread(target=close)
    closer.start()
    assert daemon.stop.wait(WAIT)  # close has begun
    assert not closed.is_set()  # the lane is still in its pass: close cannot have returned
    release.set()
    closer.join(WAIT)
    assert closed.is_set()
    assert lane_threads("hv1") - others == set()
    status = host_status(daemon, "hv1")
    assert status["revision"] == "r1"  # the pass ended and reported before close returned
    assert "web-hv1" in hosts.host("hv1").domains  # the action in flight finished
    assert not hosts.host("hv1").domains["web-hv1"].active  # and no new one started
