"""A pass works its hosts side by side (engine.sessions, engine.apply): hosts opened, observed,
asked and applied at once within ``host_parallel``; apply locks taken side by side without waiting,
or, when another run holds one, let go and taken one by one in hypervisor order; one host's failure
kept to that host; results still shown grouped by host, in manifest order.

Concurrency is made deterministic with barriers and events (a serial implementation breaks a
barrier instead of hanging), never with sleeps or timed assertions.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from reconciler.engine.actions import ActionKind
from reconciler.engine.apply import ActionResult, Hooks, InOrder, apply_fleet
from reconciler.engine.reconcile import Outcome, ReconcileOptions, reconcile
from reconciler.engine.sessions import in_key_order
from reconciler.errors import HostError, LockBusyError, PermanentHostError, TemporaryHostError
from reconciler.spec.manifests import load_manifests
from reconciler.spec.models import Host
from tests.daemon_helpers import FakeHypervisor
from tests.helpers import domain_yaml, write

WAIT = 5.0  # seconds a barrier or event waits before the test fails (never reached when it passes)


class Journal:
    """What every host of a test was asked, in order, from whichever thread asked it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[tuple[str, str]] = []
        self.threads: set[threading.Thread] = set()  # the threads hosts were called from
        self.on_event: Callable[[str, str], object] = lambda what, host: None

    def add(self, what: str, host: str) -> None:
        with self._lock:
            self.events.append((what, host))
            self.threads.add(threading.current_thread())
        self.on_event(what, host)

    def of(self, what: str) -> list[str]:
        return [host for kind, host in self.events if kind == what]

    def index(self, what: str, host: str) -> int:
        return self.events.index((what, host))


class JournalledHost(FakeHypervisor):
    """An in-memory host that journals its lock, observe, environment and define calls, runs a hook
    before each (``hooks[method]``), and raises ``errors[method]`` instead when set. While ``busy``,
    another run holds its lock: a try without waiting (journalled ``busy``) raises LockBusyError; a
    wait (journalled ``wait``) ends the other run's hold."""

    def __init__(self, name: str, journal: Journal) -> None:
        super().__init__(name)
        self.journal = journal
        self.hooks: dict[str, Callable[[], object]] = {}
        self.errors: dict[str, Exception] = {}
        self.locked = False
        self.busy = False
        self.defined_while_locked: list[bool] = []

    def _enter(self, method: str) -> None:
        self.journal.add(method, self.name)
        if method in self.hooks:
            self.hooks[method]()
        if method in self.errors:
            raise self.errors[method]

    @contextmanager
    def exclusive(self, wait: bool = True) -> Iterator[None]:
        if self.busy:
            self.journal.add("wait" if wait else "busy", self.name)
            if not wait:
                raise LockBusyError(self.name, "another apply holds the lock")
            self.busy = False
        self._enter("lock")
        self.locked = True
        try:
            yield
        finally:
            self.locked = False
            self.journal.add("unlock", self.name)

    def observe(self):
        self._enter("observe")
        return super().observe()

    def environment(self, paths, **asked):
        self._enter("environment")
        return super().environment(paths, **asked)

    def define(self, xml: str) -> None:
        self._enter("define")
        self.defined_while_locked.append(self.locked)
        super().define(xml)
        self.journal.add("defined", self.name)


class Fleet:
    """A connector to journalled hosts; ``open_errors[name]`` makes opening that host fail."""

    def __init__(self, names: Sequence[str]) -> None:
        self.journal = Journal()
        self.hosts = {name: JournalledHost(name, self.journal) for name in names}
        self.open_errors: dict[str, HostError] = {}

    def __call__(self, host: Host, write: bool):
        return self._open(host.name, write)

    @contextmanager
    def _open(self, name: str, write: bool) -> Iterator[JournalledHost]:
        self.journal.add("open-write" if write else "open-read", name)
        if name in self.open_errors:
            raise self.open_errors[name]
        try:
            yield self.hosts[name]
        finally:
            self.journal.add("close", name)


def host_doc(name: str, uri: str) -> str:
    return (
        f"apiVersion: virt-reconcile/v1\nkind: Host\nmetadata: {{name: {name}}}\n"
        f"spec:\n  uri: '{uri}'\n  capacity: {{cpus: 16, memory: 64GiB}}\n"
    )


def manifests_for(root: Path, uris: dict[str, str]):
    """Hosts (in this order) with the given URIs, each wanting one running domain ``web-NAME``."""
    write(root, "hosts.yaml", "---\n".join(host_doc(name, uri) for name, uri in uris.items()))
    write(root, "domains.yaml", "---\n".join(domain_yaml(f"web-{name}", host=name) for name in uris))
    return load_manifests(root)


def remote(machines: dict[str, str]) -> dict[str, str]:
    """URIs of hosts reached over ssh (never in-process): opened and observed in the pool."""
    return {name: f"qemu+ssh://{machine}/system" for name, machine in machines.items()}


def run(root: Path, fleet: Fleet, uris: dict[str, str], *, apply: bool = True, parallel: int = 16) -> Outcome:
    options = ReconcileOptions(apply=apply, host_parallel=parallel)
    return reconcile(manifests_for(root, uris), fleet, options)


def applied(fleet: Fleet, name: str) -> bool:
    """Whether the host holds its domain, running."""
    domain = fleet.hosts[name].domains.get(f"web-{name}")
    return domain is not None and domain.active


# ------------------------------------------------------------------------------------ side by side


@pytest.mark.parametrize("method", ["observe", "environment", "define"])
def test_hosts_are_observed_asked_and_applied_side_by_side(tmp_path: Path, method: str):
    """Each host's call waits for the other's: one host at a time breaks the barrier."""
    fleet = Fleet(["a", "b"])
    both = threading.Barrier(2, timeout=WAIT)
    for host in fleet.hosts.values():
        host.hooks[method] = both.wait
    outcome = run(tmp_path, fleet, remote({"a": "a.example", "b": "b.example"}), parallel=2)
    assert not outcome.failed, outcome.plan.hosts
    assert applied(fleet, "a") and applied(fleet, "b")


def test_plans_are_shown_in_manifest_order_whoever_is_observed_first(tmp_path: Path):
    fleet = Fleet(["z", "a"])
    a_seen = threading.Event()
    fleet.hosts["a"].hooks["observe"] = a_seen.set
    fleet.hosts["z"].hooks["observe"] = lambda: a_seen.wait(WAIT) or pytest.fail("a never observed")
    shown: list[str] = []
    manifests = manifests_for(tmp_path, remote({"z": "z.example", "a": "a.example"}))
    reconcile(manifests, fleet, ReconcileOptions(), Hooks(on_plan=lambda plan: shown.append(plan.host)))
    assert fleet.journal.of("observe") == ["a", "z"]
    assert shown == ["z", "a"]


def test_host_parallel_1_works_one_host_at_a_time_in_the_callers_thread(tmp_path: Path):
    fleet = Fleet(["a", "b", "c"])
    outcome = run(tmp_path, fleet, remote({"a": "a.x", "b": "b.x", "c": "c.x"}), parallel=1)
    assert not outcome.failed
    assert fleet.journal.threads == {threading.current_thread()}
    assert all(applied(fleet, name) for name in "abc")


def test_no_more_hosts_are_worked_at_once_than_host_parallel(tmp_path: Path):
    fleet = Fleet(["a", "b", "c", "d"])
    pairs = threading.Barrier(2, timeout=WAIT)  # observes meet two by two
    guard, active, peak = threading.Lock(), [0], [0]

    def observe_in_pairs() -> None:
        with guard:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        pairs.wait()
        with guard:
            active[0] -= 1

    for host in fleet.hosts.values():
        host.hooks["observe"] = observe_in_pairs
    outcome = run(tmp_path, fleet, remote({name: f"{name}.x" for name in "abcd"}), parallel=2)
    assert not outcome.failed
    assert peak[0] == 2


# ------------------------------------------------------------------------------------------ locks

MACHINES = {"one": "c.example", "two": "a.example", "three": "b.example"}  # key order: two three one


@pytest.mark.parametrize("order", list(itertools.permutations(MACHINES)))
def test_apply_locks_are_held_from_before_observation_to_after_the_last_change(tmp_path: Path, order):
    fleet = Fleet(list(MACHINES))
    outcome = run(tmp_path, fleet, remote({name: MACHINES[name] for name in order}))
    assert not outcome.failed
    assert sorted(fleet.journal.of("lock")) == sorted(MACHINES)  # taken side by side: none was busy
    for name in MACHINES:
        journal = fleet.journal
        assert (
            journal.index("open-write", name) < journal.index("lock", name) < journal.index("observe", name)
        )
        assert journal.index("define", name) < journal.index("unlock", name) < journal.index("close", name)
        assert fleet.hosts[name].defined_while_locked == [True]


def test_a_host_that_hangs_while_locked_holds_up_no_other_host_s_lock(tmp_path: Path):
    """``two`` comes first in the global order and does not answer while its lease is taken (until
    its call timeout): the other hosts are locked meanwhile, not one timeout after another."""
    fleet = Fleet(list(MACHINES))
    others_locked = threading.Event()
    fleet.journal.on_event = lambda what, host: (
        others_locked.set() if {"three", "one"} <= set(fleet.journal.of("lock")) else None
    )
    while_two_hangs: list[bool] = []  # whether the others were locked while two's lock hung
    fleet.hosts["two"].hooks["lock"] = lambda: while_two_hangs.append(others_locked.wait(WAIT))
    fleet.hosts["two"].errors["lock"] = TemporaryHostError("two", "no answer within the call timeout")
    outcome = run(tmp_path, fleet, remote(MACHINES))
    assert while_two_hangs == [True], "the other hosts waited for two's lock"
    assert outcome.plan.hosts["two"].host_error is fleet.hosts["two"].errors["lock"]
    assert outcome.plan.hosts["one"].host_error is None and outcome.plan.hosts["three"].host_error is None


def test_when_another_run_holds_a_lock_all_are_let_go_and_taken_in_hypervisor_order(tmp_path: Path):
    """``three`` is held by another run: the locks taken side by side are let go, then every host is
    locked one by one in the global order (two, three, one), so the run waits for three holding
    only the locks before it, as the other run does: no two runs wait on each other in a circle."""
    fleet = Fleet(list(MACHINES))
    fleet.hosts["three"].busy = True
    outcome = run(tmp_path, fleet, remote(MACHINES))
    assert not outcome.failed and all(applied(fleet, name) for name in MACHINES)
    events = fleet.journal.events
    waited = events.index(("wait", "three"))
    let_go = [index for index, (kind, _) in enumerate(events[:waited]) if kind == "unlock"]
    assert sorted(events[index][1] for index in let_go) == ["one", "two"]  # taken side by side, let go
    assert [name for kind, name in events[let_go[-1] + 1 :] if kind == "lock"] == ["two", "three", "one"]
    order = ["two", "three", "one"]
    held: set[str] = set()
    for kind, name in events:
        if kind == "lock":
            held.add(name)
        elif kind == "unlock":
            held.discard(name)
        elif kind == "wait":
            assert all(order.index(other) < order.index(name) for other in held), (name, held)


def test_a_plan_takes_no_lock_and_opens_read_only(tmp_path: Path):
    fleet = Fleet(list(MACHINES))
    run(tmp_path, fleet, remote(MACHINES), apply=False)
    assert fleet.journal.of("lock") == []
    assert sorted(fleet.journal.of("open-read")) == sorted(MACHINES)
    assert fleet.journal.of("open-write") == []


def test_in_process_hosts_are_opened_locked_and_observed_one_by_one_in_key_order(tmp_path: Path):
    fleet = Fleet(list(MACHINES))
    uris = {name: f"sandbox:state/{machine}.xml" for name, machine in MACHINES.items()}
    run(tmp_path, fleet, uris)
    steps = [event for event in fleet.journal.events if event[0] in ("open-write", "lock", "observe")]
    expected = [
        (step, name) for name in ("two", "three", "one") for step in ("open-write", "lock", "observe")
    ]
    assert steps == expected


def test_in_process_and_remote_hosts_are_locked_in_one_global_order(tmp_path: Path):
    """An in-process host is locked when opened for writing, a remote one by ``exclusive()``. Every
    writer must take them in one order, the hypervisor keys' (``in_key_order``), which
    ``apply --plan`` (offline.savedplan.apply_saved) follows: a run that locks every in-process
    host first can wait in a circle with it (a sandbox and a ``qemu+ssh`` host: 'qemu://' sorts
    before 'sandbox:')."""
    fleet = Fleet(["local", "far"])
    manifests = manifests_for(
        tmp_path, {"local": "sandbox:state/hv.xml", "far": "qemu+ssh://a.example/system"}
    )
    reconcile(manifests, fleet, ReconcileOptions(apply=True))
    lock_moments = [
        name
        for kind, name in fleet.journal.events
        if (kind == "open-write" and name == "local") or (kind == "lock" and name == "far")
    ]
    expected = [host.name for host in in_key_order(manifests.hosts.values())]
    assert expected == ["far", "local"]
    assert lock_moments == expected


# ----------------------------------------------------------------------- one host fails, alone


@pytest.mark.parametrize("stage", ["open", "lock", "observe"])
@pytest.mark.parametrize(
    "error", [TemporaryHostError("two", "no route"), PermanentHostError("two", "refused")]
)
def test_a_host_failing_to_open_lock_or_observe_fails_alone(tmp_path: Path, stage: str, error: HostError):
    """Every domain was applied once and stopped by hand since; ``two`` fails, the others start
    theirs. (A domain to *define* would be held: it may run on the host that cannot be seen.)"""
    fleet = Fleet(list(MACHINES))
    assert not run(tmp_path, fleet, remote(MACHINES)).failed
    for name, host in fleet.hosts.items():
        host.stop(f"web-{name}", 0)
    fleet.journal.events.clear()
    if stage == "open":
        fleet.open_errors["two"] = error
    else:
        fleet.hosts["two"].errors[stage] = error
    outcome = run(tmp_path, fleet, remote(MACHINES))
    plan = outcome.plan.hosts["two"]
    assert plan.errors == (str(error),) and plan.host_error is error
    assert "two" not in outcome.results and not applied(fleet, "two")
    assert applied(fleet, "one") and applied(fleet, "three")
    for name in ("one", "three"):
        assert [(r.action.kind, r.ok) for r in outcome.results[name]] == [(ActionKind.START, True)]
    assert sorted(fleet.journal.of("lock")) == sorted(["three", "one"] if stage == "open" else MACHINES)
    assert sorted(fleet.journal.of("close")) == sorted(MACHINES if stage != "open" else ["one", "three"])


def test_a_bug_on_one_host_never_unlocks_or_closes_another_mid_apply(tmp_path: Path):
    """A non-HostError (a bug) raised by one host's apply ends the pass (the daemon reports it and
    goes on), but only once every other host's work has ended: closing a host, and releasing its
    lock, while its actions still run would let another apply in beside them. Host b's define
    waits (at most 1 s, a look not a limit) for a's connection to close: that must not come first."""
    fleet = Fleet(["a", "b"])
    a_closed = threading.Event()
    fleet.journal.on_event = lambda what, host: (what, host) == ("close", "a") and a_closed.set()
    fleet.hosts["a"].errors["define"] = RuntimeError("a bug")
    fleet.hosts["b"].hooks["define"] = lambda: a_closed.wait(1.0)
    with pytest.raises(RuntimeError, match="a bug"):
        run(tmp_path, fleet, remote({"a": "a.example", "b": "b.example"}), parallel=2)
    of_b = [what for what, host in fleet.journal.events if host == "b"]
    assert of_b[of_b.index("unlock") :] == ["unlock", "close"], of_b  # b's define (if begun) ended first


# ------------------------------------------------------------------- results in manifest order


def planned(root: Path, names: Sequence[str]) -> tuple[Fleet, dict]:
    """Journalled hosts and their plans (one domain to define and start on each), not applied."""
    fleet = Fleet(names)
    manifests = manifests_for(root, remote({name: f"{name}.example" for name in names}))
    return fleet, reconcile(manifests, fleet, ReconcileOptions()).plan.hosts


def last_first(hosts: Sequence[str], work: Callable[[str], list[ActionResult]]) -> dict:
    """An EachHost working the hosts one by one, the last host first."""
    done = {host: work(host) for host in reversed(hosts)}
    return {host: done[host] for host in hosts}


def test_results_of_hosts_finished_early_wait_for_the_hosts_before_them(tmp_path: Path):
    fleet, plans = planned(tmp_path, ["a", "b", "c"])
    shown: list[tuple[str, ActionKind]] = []
    hooks = Hooks(on_result=lambda result: shown.append((result.action.host, result.action.kind)))
    results = apply_fleet(fleet.hosts, plans, hooks=hooks, each_host=last_first)
    assert fleet.journal.of("define") == ["c", "b", "a"]  # worked last host first
    assert shown == [(host, kind) for host in "abc" for kind in (ActionKind.DEFINE, ActionKind.START)]
    assert list(results) == ["a", "b", "c"]


def test_a_later_host_finished_while_an_earlier_one_works_is_shown_after_it(tmp_path: Path):
    """Two threads: b's whole stage ends (results made) before a's first action ends."""
    fleet, plans = planned(tmp_path, ["a", "b"])
    b_done = threading.Event()
    fleet.hosts["a"].hooks["define"] = lambda: b_done.wait(WAIT) or pytest.fail("b never finished")

    def side_by_side(hosts: Sequence[str], work: Callable[[str], list[ActionResult]]) -> dict:
        found: dict[str, list[ActionResult]] = {}

        def one(host: str) -> None:
            found[host] = work(host)
            if host == "b" and found[host]:
                b_done.set()  # the grow stage of b has ended, its results all made

        threads = [threading.Thread(target=one, args=(host,)) for host in hosts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(2 * WAIT)
        return {host: found[host] for host in hosts}

    shown: list[str] = []
    apply_fleet(
        fleet.hosts,
        plans,
        hooks=Hooks(on_result=lambda r: shown.append(r.action.host)),
        each_host=side_by_side,
    )
    assert fleet.journal.index("defined", "b") < fleet.journal.index("defined", "a")
    assert shown == ["a", "a", "b", "b"]


def test_in_order_passes_the_first_hosts_results_at_once_and_holds_the_others():
    shown: list[str] = []  # InOrder hands results on untouched: plain strings stand for them here
    order = InOrder(["a", "b", "c"], Hooks(on_result=shown.append))
    a, b, c = (order.hooks(host) for host in "abc")
    c.on_result("c1")
    b.on_result("b1")
    a.on_result("a1")
    assert shown == ["a1"]
    c.finished()
    assert shown == ["a1"]
    a.finished()
    assert shown == ["a1", "b1"]
    b.on_result("b2")
    assert shown == ["a1", "b1", "b2"]
    b.finished()
    assert shown == ["a1", "b1", "b2", "c1"]
