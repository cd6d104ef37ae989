"""Hosts the daemon no longer manages (relabelled out of its selector, removed from git, renamed):
gone from /status, status.json and /metrics once a revision is taken up (and after a restart), never
marked in error again by a source error or invalid manifests, their waiting job cancelled, and their
lane's thread ended.

Concurrency is made deterministic with events (a pass blocks until the test releases it); the only
waits with a limit are for things that must happen, far above what they take.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from reconciler.daemon import Trigger
from reconciler.daemon.decision import Reason
from reconciler.daemon.lanes import HostLanes, LaneJob
from reconciler.daemon.status import HostReport, HostStatus, StatusStore
from reconciler.errors import SourceError, TemporaryHostError
from reconciler.spec.labels import Selector
from reconciler.spec.manifests import load_manifests
from tests.daemon_helpers import FakeHosts, in_process_daemon, settle
from tests.helpers import domain_yaml, host_yaml

START = [(Trigger.START, None)]
WEBHOOK = [(Trigger.WEBHOOK, None)]
WAIT = 10.0  # seconds to wait for what must happen (never reached when the test passes)

pytestmark = pytest.mark.usefixtures("no_timers_left")  # tests/unit/conftest.py


@pytest.fixture
def daemons() -> Iterator[Callable[..., tuple]]:
    """``in_process_daemon`` whose daemons are closed (lanes ended) when the test ends; every
    blocked call is released first, so a failing test leaves no lane blocked."""
    made: list[tuple] = []
    releases: list[threading.Event] = []

    def make(root: Path, **kwargs: object) -> tuple:
        made.append((*in_process_daemon(root, **kwargs), releases))
        return made[-1]

    yield make
    for release in releases:
        release.set()
    for daemon, *_rest in made:
        daemon.close()


def write_hosts(root: Path, roles: Mapping[str, str], memory: str = "1GiB") -> None:
    """The manifests: one sandbox Host per name, labelled ``role``, each with a domain ``web-NAME``."""
    documents = [
        host_yaml(name, state=f"state/{name}.xml").replace(
            f"{{name: {name}}}", f"{{name: {name}, labels: {{role: {role}}}}}"
        )
        for name, role in roles.items()
    ]
    documents += [domain_yaml(f"web-{name}", host=name, memory=memory) for name in roles]
    (root / "manifests" / "all.yaml").write_text("---\n".join(documents))


def shown(daemon) -> set[str]:
    """The hosts in /status, in status.json and with a series in /metrics."""
    saved = json.loads(daemon.status.path.read_text())["hosts"]
    metrics = daemon.metrics.exposition().decode()
    in_metrics = {name for name in ("hv1", "hv2", "hv3") if f'host="{name}"' in metrics}
    return set(daemon.status.document()["hosts"]) | set(saved) | in_metrics


def lane_threads(host: str) -> set[threading.Thread]:
    """The live lane threads of ``host`` (of every daemon still running in this process)."""
    return {thread for thread in threading.enumerate() if thread.name == f"lane-{host}"}


def block(hosts: FakeHosts, name: str, releases: list[threading.Event]) -> tuple[threading.Event, ...]:
    """Make the host's ``define`` wait for ``release`` (once ``entered`` is set), every call."""
    hypervisor = hosts.host(name)
    original = hypervisor.define
    entered, release = threading.Event(), threading.Event()
    releases.append(release)

    def blocked(xml: str) -> None:
        entered.set()
        assert release.wait(WAIT), f"{name}.define was never released"
        original(xml)

    hypervisor.define = blocked  # type: ignore[method-assign]
    return entered, release


# ------------------------------------------------------------------------------ /status and /metrics


@pytest.mark.parametrize("how", ["relabel", "remove", "rename"])
def test_a_host_no_longer_managed_leaves_status_the_status_file_and_metrics(tmp_path: Path, daemons, how):
    daemon, source, hosts, _ = daemons(tmp_path, hosts=("hv1", "hv2"))
    daemon.config.selector = Selector.parse(["role=web"])
    write_hosts(tmp_path, {"hv1": "web", "hv2": "web"})
    hosts.host("hv2").broken["define"] = TemporaryHostError(
        "hv2", "unreachable"
    )  # an error host: `status` exits 1 for it
    settle(daemon, START)
    assert daemon.status.host("hv2").result == "error"
    assert shown(daemon) == {"hv1", "hv2"}
    after = {"relabel": {"hv1": "web", "hv2": "db"}, "remove": {"hv1": "web"}}
    write_hosts(tmp_path, after.get(how, {"hv1": "web", "hv3": "web"}))
    source.revision = "r2"
    settle(daemon, WEBHOOK)
    kept = {"hv1", "hv3"} if how == "rename" else {"hv1"}
    assert shown(daemon) == kept
    assert any(entry["hosts"] == ["hv2"] for entry in daemon.status.document()["history"])  # kept
    # A source error, then invalid manifests: only the hosts still managed are in error.
    source.fail_with.append(SourceError("origin unreachable"))
    settle(daemon, [(Trigger.POLL, None)])
    (tmp_path / "manifests" / "broken.yaml").write_text("kind: Host\nmetadata: {name: [\n")
    source.revision = "r3"
    settle(daemon, WEBHOOK)
    assert daemon.status.document()["revisionError"]
    assert shown(daemon) == kept
    assert {status["result"] for status in daemon.status.document()["hosts"].values()} == {"error"}


def test_a_stale_host_in_the_status_file_is_dropped_at_the_first_revision_after_a_restart(
    tmp_path: Path, daemons
):
    first, _source, hosts, _ = daemons(tmp_path, hosts=("hv1", "hv2"))
    hosts.host("hv2").broken["define"] = TemporaryHostError("hv2", "unreachable")
    settle(first, START)
    first.close()
    assert set(json.loads(first.status.path.read_text())["hosts"]) == {"hv1", "hv2"}
    daemon, *_ = daemons(tmp_path, hosts=("hv1",))  # the same state dir, hv2 gone from the manifests
    assert daemon.status.host("hv2").result == "error"  # loaded from the file, as saved
    settle(daemon, START)
    assert shown(daemon) == {"hv1"}
    assert daemon.status.host("hv1").result in ("applied", "unchanged")


def test_the_status_store_ignores_reports_of_a_dropped_host(tmp_path: Path):
    store = StatusStore(tmp_path / "status.json")
    for name in ("hv1", "hv2"):
        store.set_host(name, HostStatus("r1", "applied", "r1", "", "t"))
    assert store.keep_only(["hv1"]) == {"hv2"}
    store.host_reported("hv2", "r2", "applied", "", HostReport(), ok=True)  # its pass was running
    store.hosts_failed(["hv2"], "r2", "reconcile failed")
    store.source_failed("r2", "fetch failed")
    assert store.every_host_failed(["hv1", "hv2"], "r3", "manifests invalid") == ["hv1"]
    assert list(store.document()["hosts"]) == ["hv1"]


# ------------------------------------------------------------------------------ lanes


def test_a_job_waiting_for_a_host_that_a_newer_revision_drops_never_runs(tmp_path: Path, daemons):
    daemon, source, hosts, releases = daemons(tmp_path, hosts=("hv1", "hv2"))
    daemon.config.selector = Selector.parse(["role=web"])
    write_hosts(tmp_path, {"hv1": "web", "hv2": "web"})
    entered, release = block(hosts, "hv2", releases)
    daemon.reconcile_pass(START)
    assert entered.wait(WAIT)  # hv2's pass at r1 is in its define
    write_hosts(tmp_path, {"hv1": "web", "hv2": "web"}, memory="2GiB")
    source.revision = "r2"
    daemon.reconcile_pass(WEBHOOK)  # hv2's job at r2 waits in its lane
    assert "hv2" in daemon.lanes.busy()
    write_hosts(tmp_path, {"hv1": "web", "hv2": "db"}, memory="2GiB")
    source.revision = "r3"
    daemon.reconcile_pass(WEBHOOK)  # hv2 leaves the selector
    release.set()  # the pass running finishes
    assert daemon.lanes.wait_idle(WAIT)
    assert hosts.writes.count("hv2") == 1  # r1's pass only: r2's job was cancelled
    assert "2097152" not in hosts.host("hv2").domains["web-hv2"].xml  # r2's 2 GiB never sent
    assert shown(daemon) == {"hv1"}  # r1's late report did not bring hv2 back


def test_a_job_that_waited_for_a_slot_while_its_host_was_dropped_writes_nothing(tmp_path: Path):
    """More hosts than --host-parallel: hv2's lane has taken its job and waits for the one slot
    hv1's pass holds when a newer revision drops hv2; once the slot is free, hv2 is not written."""
    (tmp_path / "hosts.yaml").write_text(host_yaml("hv1") + "---\n" + host_yaml("hv2", state="state/hv2.xml"))
    manifests = load_manifests(tmp_path)
    ran: list[list[str]] = []
    in_hv1, release = threading.Event(), threading.Event()

    def work(jobs: Mapping[str, LaneJob]) -> frozenset[str]:
        ran.append(sorted(jobs))
        if "hv1" in jobs:
            in_hv1.set()
            release.wait(WAIT)
        return frozenset()

    stop = threading.Event()
    lanes = HostLanes(work, parallel=1, stop=stop)
    try:
        lanes.submit("hv1", LaneJob(manifests, "r1", Reason.REVISION))
        assert in_hv1.wait(WAIT)  # hv1's pass holds the only slot
        lanes.submit("hv2", LaneJob(manifests, "r1", Reason.REVISION))
        waited = 0
        while "hv2" not in lanes._running:  # until its lane has taken the job (then it waits for a slot)
            assert waited < WAIT * 100 and len(ran) == 1, "hv2's lane never took its job"
            threading.Event().wait(0.01)
            waited += 1
        assert lanes.keep(["hv1"]) == set()  # r2 drops hv2: nothing left waiting to cancel
        release.set()
        assert lanes.wait_idle(WAIT)
        assert ran == [["hv1"]]
    finally:
        release.set()
        stop.set()
        lanes.close(WAIT)


def test_a_job_submitted_for_a_host_no_longer_managed_does_nothing(tmp_path: Path):
    (tmp_path / "hosts.yaml").write_text(host_yaml("hv1") + "---\n" + host_yaml("hv2", state="state/hv2.xml"))
    manifests = load_manifests(tmp_path)
    ran: list[str] = []
    stop = threading.Event()
    lanes = HostLanes(lambda jobs: ran.extend(jobs) or frozenset(), parallel=2, stop=stop)
    try:
        others = lane_threads("hv1")
        lanes.keep(["hv2"])
        lanes.submit("hv1", LaneJob(manifests, "r1", Reason.REVISION))  # a submit that lost a race
        lanes.submit("hv2", LaneJob(manifests, "r1", Reason.REVISION))
        assert lanes.wait_idle(WAIT)
        for thread in lane_threads("hv1") - others:
            thread.join(WAIT)
        assert ran == ["hv2"]
        assert not lane_threads("hv1") - others
    finally:
        stop.set()
        lanes.close(WAIT)


def test_the_lane_of_a_dropped_host_ends_and_a_host_managed_again_gets_a_new_one(tmp_path: Path, daemons):
    daemon, source, _hosts, _ = daemons(tmp_path, hosts=("hv1", "hv2"))
    daemon.config.selector = Selector.parse(["role=web"])
    write_hosts(tmp_path, {"hv1": "web", "hv2": "web"})
    others = lane_threads("hv2")
    settle(daemon, START)
    [lane] = lane_threads("hv2") - others
    write_hosts(tmp_path, {"hv1": "web", "hv2": "db"})
    source.revision = "r2"
    settle(daemon, WEBHOOK)
    lane.join(WAIT)
    assert not lane.is_alive()
    write_hosts(tmp_path, {"hv1": "web", "hv2": "web"}, memory="2GiB")
    source.revision = "r3"
    settle(daemon, WEBHOOK)
    assert daemon.status.host("hv2").result == "applied"
    assert daemon.status.host("hv2").appliedRevision == "r3"
    assert len(lane_threads("hv2") - others) == 1
