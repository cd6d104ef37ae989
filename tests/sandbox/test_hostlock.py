"""Per-host locks: a second apply waits for the first, then observes afresh; past the wait limit it
fails naming the holder; a dead holder's lock never blocks for good.

Local hypervisors are locked with flock (tried here on lock files in a temporary folder, from two
threads and from a second process); other hypervisors with a lease object inside libvirt, tried on
the test driver's shared ``test:///default``, where every connection of this process sees one
driver (the network lease). The secret lease of real daemons is tried in tests/e2e.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from reconciler.adapters import sandbox
from reconciler.adapters.libvirt import host as libvirt_host
from reconciler.adapters.libvirt import hostlock, leases, lockholders
from reconciler.engine.apply import Hooks
from reconciler.engine.plan import HostPlan
from reconciler.engine.reconcile import Outcome, ReconcileOptions, reconcile
from reconciler.errors import PermanentHostError, TemporaryHostError
from reconciler.spec.hosturi import HostURI
from reconciler.spec.manifests import load_manifests
from tests.helpers import REPO, cli, domain_yaml, lease_held_by_another_run, write

SYSTEM = HostURI("qemu:///system")
DEFAULT = HostURI("test:///default")
QUICK = lockholders.LockLimits(wait=0.4, poll=0.02, poll_max=0.05)
PATIENT = lockholders.LockLimits(wait=10, poll=0.02, poll_max=0.05)
LOG = "virt_reconcile.adapters.hostlock"


@pytest.fixture
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "locks"
    monkeypatch.setenv(hostlock.DIR_ENV, str(folder))
    return folder


@pytest.fixture
def default_conns() -> Iterator[tuple[libvirt.virConnect, libvirt.virConnect]]:
    """Two connections to the one in-process ``test:///default`` driver; no lease is left behind."""
    first, second = libvirt.open(DEFAULT.text), libvirt.open(DEFAULT.text)
    try:
        yield first, second
    finally:
        found = leases.lease_kind(first, DEFAULT).current()
        if found is not None:
            leases.lease_kind(first, DEFAULT).remove(found[0])
        first.close()
        second.close()


def in_thread(target, *args) -> tuple[threading.Thread, list]:
    """Run ``target`` in a thread; the list receives its result or the exception it raised."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(target(*args))
        except Exception as err:  # handed to the test
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def take_local(limits: lockholders.LockLimits) -> float:
    """Take and release the local lock of qemu:///system; when it was taken (monotonic)."""
    with hostlock.local_lock(SYSTEM, "hv", limits):
        return time.monotonic()


def take_lease(conn: libvirt.virConnect, limits: lockholders.LockLimits) -> float:
    with leases.hypervisor_lease(conn, DEFAULT, "hv", limits):
        return time.monotonic()


def ended_pid() -> int:
    """The pid of a process of this machine that has ended."""
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    return int(ended.stdout)


# --- local hypervisors: flock ------------------------------------------------------------------


def test_every_spelling_of_one_local_hypervisor_names_one_lock_file():
    names = {
        hostlock.lock_file_name(HostURI(u))
        for u in ("qemu:///system", "qemu+unix:///system/", "qemu://localhost/system")
    }
    assert names == {"qemu_system.lock"}
    assert hostlock.lock_file_name(HostURI("qemu:///session")) == f"qemu_session-uid{os.getuid()}.lock"
    other_daemon = hostlock.lock_file_name(HostURI("qemu:///system?socket=/run/other/libvirt-sock"))
    assert other_daemon not in names


def test_a_second_local_lock_waits_for_the_first_then_takes_it(lock_dir, caplog):
    with hostlock.local_lock(SYSTEM, "hv", QUICK) as path:
        assert path == lock_dir / "qemu_system.lock"
        assert f"pid={os.getpid()}" in path.read_text()  # the holder is recorded for whoever waits
        waiter, taken = in_thread(take_local, PATIENT)
        time.sleep(0.3)
        assert waiter.is_alive() and taken == [], "the second holder must wait"
        released = time.monotonic()
    waiter.join(timeout=5)
    assert len(taken) == 1 and isinstance(taken[0], float) and taken[0] >= released
    assert "hv: waiting up to 10s for the lock file" in caplog.text
    assert path.read_text() == ""  # released: no holder recorded


def test_a_local_lock_held_by_another_process_is_named_and_dies_with_it(lock_dir):
    code = (
        "import sys\n"
        "from reconciler.adapters.libvirt import hostlock, lockholders\n"
        "from reconciler.spec.hosturi import HostURI\n"
        "with hostlock.local_lock(HostURI('qemu:///system'), 'hv', lockholders.LockLimits()):\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(TemporaryHostError) as refused:
            take_local(QUICK)
        message = str(refused.value)
        assert message.startswith("hv: another apply holds the lock file ")
        assert (
            f"pid {holder.pid} on {socket.gethostname()}" in message
            and "gave up after waiting 0.4s" in message
        )
    finally:
        holder.kill()  # no release, no clean-up: the kernel drops the flock with the process
        holder.wait()
    take_local(QUICK)


def test_without_a_usable_run_folder_the_lock_goes_to_the_state_dir_with_a_warning(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.delenv(hostlock.DIR_ENV, raising=False)
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setattr(hostlock, "RUN_LOCK_DIR", tmp_path / "not-a-folder" / "locks")
    monkeypatch.setenv("VIRT_RECONCILE_STATE_DIR", str(tmp_path / "state"))
    with hostlock.local_lock(SYSTEM, "hv", QUICK) as path:
        assert path == tmp_path / "state" / "locks" / "qemu_system.lock"
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    assert "keeps out only this user's runs on qemu:///system" in caplog.text
    caplog.clear()
    with hostlock.local_lock(HostURI("qemu:///session"), "hv", QUICK):
        pass
    assert caplog.text == ""  # a session daemon is this user's alone: the state dir is enough


# --- other hypervisors: a lease in libvirt (the test driver's network lease) -------------------


def test_a_second_lease_waits_for_the_first_then_takes_it(default_conns):
    first, second = default_conns
    with leases.hypervisor_lease(first, DEFAULT, "hv", QUICK) as what:
        assert what.startswith("the libvirt network 'virt-reconcile-lock' (")
        uuid, text = leases.lease_kind(second, DEFAULT).current() or ("", "")
        holder = lockholders.Holder.parse(text)
        assert holder is not None and (holder.hostname, holder.pid) == (socket.gethostname(), os.getpid())
        waiter, taken = in_thread(take_lease, second, PATIENT)
        time.sleep(0.3)
        assert waiter.is_alive() and taken == [], "the second holder must wait"
        released = time.monotonic()
    waiter.join(timeout=5)
    assert len(taken) == 1 and isinstance(taken[0], float) and taken[0] >= released
    assert leases.lease_kind(second, DEFAULT).current() is None  # removed on release
    with pytest.raises(libvirt.libvirtError):
        second.networkLookupByUUIDString(uuid)


def test_past_the_wait_the_error_names_the_lease_holder(default_conns):
    first, second = default_conns
    with (
        lease_held_by_another_run(first, DEFAULT, QUICK) as what,
        pytest.raises(TemporaryHostError) as refused,
    ):
        take_lease(second, QUICK)
    uuid = what.split("(")[1].rstrip(")")
    assert str(refused.value).startswith(
        "hv: another apply holds the libvirt network 'virt-reconcile-lock': "
    )
    assert f"pid {os.getpid()} on {socket.gethostname()} since " in str(refused.value)
    assert f"(lease {uuid}); gave up after waiting 0.4s (VIRT_RECONCILE_LOCK_WAIT sets the wait)" in str(
        refused.value
    )


def test_a_stale_lease_is_broken_with_a_warning(default_conns, caplog):
    first, second = default_conns
    hour_ago = time.time() - 3600
    dead = lockholders.Holder("admin-box", 4242, hour_ago, hour_ago)
    leases.lease_kind(first, DEFAULT).create(dead.text())
    with leases.hypervisor_lease(second, DEFAULT, "hv", QUICK):
        _uuid, text = leases.lease_kind(first, DEFAULT).current() or ("", "")
        assert f"pid={os.getpid()}" in text
    assert "hv: breaking the libvirt network 'virt-reconcile-lock'" in caplog.text
    assert "pid 4242 on admin-box since " in caplog.text and "stale after 300s" in caplog.text


def test_a_fresh_lease_of_another_machine_is_not_broken(default_conns):
    first, second = default_conns
    alive = lockholders.Holder("admin-box", 4242, time.time() - 3600, time.time())
    leases.lease_kind(first, DEFAULT).create(alive.text())
    with pytest.raises(TemporaryHostError, match="pid 4242 on admin-box"):
        take_lease(second, QUICK)


def test_a_held_lease_is_renewed_so_a_long_apply_never_goes_stale(default_conns):
    first, second = default_conns
    short = lockholders.LockLimits(wait=1.2, stale=0.4, renew=0.1, poll=0.02, poll_max=0.05)
    with lease_held_by_another_run(first, DEFAULT, short):
        time.sleep(0.6)  # older than the stale limit, but renewed meanwhile
        with pytest.raises(TemporaryHostError, match=f"pid {os.getpid()}"):
            take_lease(second, short)


def test_a_lease_this_run_holds_already_is_refused_at_once_not_waited_for(default_conns):
    """Two Host entries reaching one hypervisor by two URIs (a name and an address): the run that
    holds the lease for the first must not wait for itself on the second."""
    first, second = default_conns
    patient = lockholders.LockLimits(wait=5, poll=0.02, poll_max=0.05)  # waited out: a TemporaryHostError
    own = "held by this run already, for another Host entry"
    with (
        leases.hypervisor_lease(first, DEFAULT, "hv-by-name", patient) as what,
        pytest.raises(PermanentHostError, match=own),
    ):
        take_lease(second, patient)
    assert what.split("(")[1].rstrip(")") not in leases._HELD_LEASES  # released with the block


def test_a_lease_whose_holder_ended_on_this_machine_is_broken_at_once(default_conns, caplog):
    """A run that could not remove its lease (its host went silent) and has ended since holds
    nothing: the next run on this machine breaks its lease without waiting for the stale limit."""
    first, second = default_conns
    pid = ended_pid()
    now = time.time()
    here = lockholders.where_pids_are()
    kind = leases.lease_kind(second, DEFAULT)
    kind.create(lockholders.Holder(socket.gethostname(), pid, now, now, *here).text())
    with caplog.at_level(logging.WARNING, LOG):
        take_lease(first, QUICK)  # QUICK waits 0.4 s and the lease is fresh: only "ended" breaks it
    assert f"pid {pid} on {socket.gethostname()}" in caplog.text
    assert "has ended without removing it" in caplog.text
    assert kind.current() is None


def test_a_lease_this_process_could_not_remove_is_broken_when_met_again(default_conns, caplog):
    """A daemon's pass whose host stopped answering before its lease was removed: its next pass on
    that host (same process, holder alive) breaks the lease at once instead of waiting 5 minutes."""
    _first, second = default_conns
    lost = libvirt.open(DEFAULT.text)
    with caplog.at_level(logging.WARNING, LOG), leases.hypervisor_lease(lost, DEFAULT, "hv", QUICK):
        lost.close()  # the connection is gone when the lease is let go: it cannot be removed
    assert "hv: could not remove the libvirt network 'virt-reconcile-lock'" in caplog.text
    kind = leases.lease_kind(second, DEFAULT)
    left = kind.current()
    assert left is not None
    caplog.clear()
    with caplog.at_level(logging.WARNING, LOG):
        take_lease(second, QUICK)  # the lease is fresh and its holder (this process) alive
    assert f"breaking the libvirt network 'virt-reconcile-lock' ({left[0]})" in caplog.text
    assert "this process could not remove it when it let it go" in caplog.text


@pytest.mark.parametrize(
    "holder",
    [
        pytest.param(lambda pid, here: (os.getppid(), here), id="alive-on-this-machine"),
        pytest.param(lambda pid, here: (pid, ("", "")), id="ended-but-recorded-no-place"),
        pytest.param(lambda pid, here: (pid, ("another-boot", here[1])), id="ended-on-another-boot"),
    ],
)
def test_a_fresh_lease_is_waited_for_unless_its_holder_surely_ended(default_conns, holder):
    first, second = default_conns
    pid, (boot, pidns) = holder(ended_pid(), lockholders.where_pids_are())
    now = time.time()
    kind = leases.lease_kind(second, DEFAULT)
    uuid = kind.create(lockholders.Holder(socket.gethostname(), pid, now, now, boot, pidns).text())
    try:
        with pytest.raises(TemporaryHostError, match="another apply holds"):
            take_lease(first, QUICK)
    finally:
        kind.remove(uuid)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "-1", "ten"])
@pytest.mark.parametrize("env", [lockholders.WAIT_ENV, lockholders.STALE_ENV])
def test_lock_limits_from_the_environment_are_finite_numbers_of_seconds(monkeypatch, env, value):
    monkeypatch.setenv(env, value)
    with pytest.raises(PermanentHostError, match=f"{env}='{value}' is not a number of seconds"):
        lockholders.LockLimits.from_env("hv")


def test_a_lease_is_never_stale_after_zero_seconds(monkeypatch):
    monkeypatch.setenv(lockholders.STALE_ENV, "0")
    with pytest.raises(PermanentHostError, match="cannot be stale after 0 seconds"):
        lockholders.LockLimits.from_env("hv")
    monkeypatch.setenv(lockholders.STALE_ENV, "30")
    monkeypatch.setenv(lockholders.WAIT_ENV, "0")  # no wait at all: fail at once if held
    limits = lockholders.LockLimits.from_env("hv")
    assert (limits.wait, limits.stale) == (0, 30)


def test_release_leaves_alone_a_lease_taken_since_by_someone_else(default_conns):
    first, second = default_conns
    kind = leases.lease_kind(second, DEFAULT)
    with leases.hypervisor_lease(first, DEFAULT, "hv", QUICK):
        mine, _text = kind.current() or ("", "")
        kind.remove(mine)  # broken as stale by another run, which then took its own
        theirs = kind.create(lockholders.Holder("admin-box", 4242, time.time(), time.time()).text())
    assert (kind.current() or ("",))[0] == theirs


# --- through connect(): apply holds the lock from observation to the last action ---------------


def test_plan_takes_no_lease_and_apply_holds_one(tmp_path, default_conns):
    first, _second = default_conns
    write(tmp_path, "hosts.yaml", host_doc("test:///default", cpus=8))
    host = load_manifests(tmp_path).hosts["hv1"]
    with libvirt_host.connect(host, write=False):
        assert leases.lease_kind(first, DEFAULT).current() is None
    with libvirt_host.connect(host, write=True):
        assert leases.lease_kind(first, DEFAULT).current() is not None
    assert leases.lease_kind(first, DEFAULT).current() is None


def host_doc(uri: str, cpus: int) -> str:
    return (
        "apiVersion: virt-reconcile/v1\nkind: Host\nmetadata: {name: hv1}\n"
        f"spec:\n  uri: {uri}\n  capacity: {{cpus: {cpus}, memory: 1TiB}}\n"
        "  overcommit: {cpu: {ratio: 1}}\n"
    )


def test_two_applies_at_once_cannot_both_pass_the_policy(tmp_path, default_conns):
    """Each apply alone fits; together they break cpu.total. Both plan before either applies
    unless the lock keeps the second out until the first is done (a barrier in the plan hook
    holds the first one back, for the second to catch up with if it can)."""
    conn, _ = default_conns
    background = sum(dom.info()[3] for dom in conn.listAllDomains())  # test:///default's own domain
    names = [f"lockrace-{i}-{os.getpid()}" for i in (1, 2)]
    roots = []
    for name in names:
        root = tmp_path / name
        write(root, "hosts.yaml", host_doc("test:///default", cpus=background + 3))
        write(root, "domains.yaml", domain_yaml(name, vcpus=2, state="stopped"))
        roots.append(root)
    barrier = threading.Barrier(2, timeout=2)

    def meet(_plan: HostPlan) -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()

    def apply(root: Path) -> Outcome:
        connect = lambda host, write: libvirt_host.connect(host, write=write)  # noqa: E731
        return reconcile(load_manifests(root), connect, ReconcileOptions(apply=True), Hooks(on_plan=meet))

    try:
        runs = [in_thread(apply, root) for root in roots]
        for thread, _ in runs:
            thread.join(timeout=30)
        outcomes = [outcome[0] for _, outcome in runs]
        assert all(isinstance(o, Outcome) for o in outcomes), outcomes
        refused = [o.plan.hosts["hv1"].refused for o in outcomes]
        assert sorted(refused) == [False, True], "one apply must see the other's domain and refuse"
        defined = [name for name in names if name in {d.name() for d in conn.listAllDomains()}]
        assert len(defined) == 1
        assert sum(dom.info()[3] for dom in conn.listAllDomains()) <= background + 3
    finally:
        for dom in conn.listAllDomains():
            if dom.name() in names:
                dom.undefine()


# --- sandbox hosts: the state file's lock --------------------------------------------------------


def test_a_sandbox_plan_takes_no_lock_and_creates_no_file(sandbox):
    sandbox.domains(a={})
    assert cli("apply", str(sandbox.root)).code == 0
    lock = sandbox.state.with_name("hv1.xml.lock")
    lock.unlink()
    sandbox.domains(a={}, b={})
    with hostlock.file_lock(lock, "someone", QUICK):  # an apply in progress does not hold up a plan
        planner, planned = in_thread(lambda: cli("plan", str(sandbox.root)).code)
        planner.join(timeout=10)
        assert planned == [2], "a plan must not wait for an apply"
    lock.unlink()
    assert cli("plan", str(sandbox.root)).code == 2
    assert not lock.exists(), "a plan must write nothing, so a read-only state folder works"


def test_a_sandbox_apply_past_the_wait_fails_naming_the_holder(sandbox, monkeypatch):
    monkeypatch.setenv(lockholders.WAIT_ENV, "0.3")
    sandbox.domains(a={})
    with sandbox_lock(sandbox.state):
        applier, applied = in_thread(lambda: cli("apply", str(sandbox.root)))
        applier.join(timeout=10)
        assert applied, "the apply must give up after the wait limit"
    run = applied[0]
    assert run.code == 1
    assert "hv1: another apply holds the lock file" in run.out + run.err
    assert f"pid {os.getpid()} on {socket.gethostname()}" in run.out + run.err
    assert not sandbox.state.exists()
    assert cli("apply", str(sandbox.root)).code == 0


def sandbox_lock(path: Path):
    return sandbox.locked(path, write=True, host="someone")


@pytest.fixture(autouse=True)
def _hostlock_warnings(caplog):
    caplog.set_level(logging.WARNING, logger=LOG)
