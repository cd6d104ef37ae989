"""Two applies at once against the real libvirtd: the per-host lock lets one through and makes the
other wait, observe afresh and refuse, so the host never ends over its limit.

Each apply's manifests fit the host alone and break ``cpu.total`` together (domains of type qemu
that stay shut off and count since ``cpu.countInactive`` is on). The limit is set above whatever
the host already holds, so other domains on the daemon cannot change the verdicts. Also tried here:
the secret lease that remote hosts use, on this real daemon's secret driver.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import libvirt
import pytest
import yaml
from lxml import etree

from reconciler.adapters.libvirt import leases, lockholders
from reconciler.errors import TemporaryHostError
from reconciler.spec.hosturi import HostURI
from tests.e2e.conftest import E2E, URI
from tests.helpers import REPO, lease_held_by_another_run

WIDE = 60  # vCPUs of each apply's domain: either fits under the limit alone, the two do not
ROOM = 100  # the limit is what the host already counts plus this
VIRT_RECONCILE = Path(sys.executable).with_name("virt-reconcile")

#: ``virt-reconcile apply`` with a barrier across processes in its plan hook: the first apply to
#: plan waits (up to 5 s) for the other to plan too before it applies. Without a lock both plan
#: on the same observation and both apply; with it the second is still waiting for the lock.
BARRIER_LAUNCHER = """
import dataclasses, os, sys, time
from pathlib import Path
import reconciler.cli.commands.apply as command

def meet(plan):
    folder = Path(os.environ["VR_BARRIER"])
    (folder / str(os.getpid())).touch()
    deadline = time.monotonic() + 5
    while len(list(folder.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)

real = command.reconcile

def reconcile(manifests, connect, options, hooks, **kwargs):
    show = hooks.on_plan
    def on_plan(plan):
        meet(plan)
        if show is not None:
            show(plan)
    return real(manifests, connect, options, dataclasses.replace(hooks, on_plan=on_plan), **kwargs)

command.reconcile = reconcile
from reconciler.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def counted_vcpus(conn: libvirt.virConnect) -> int:
    """vCPUs ``cpu.total`` counts on the host now: every domain's, running or not."""
    total = 0
    for dom in conn.listAllDomains():
        try:
            xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        except libvirt.libvirtError:
            continue  # undefined meanwhile by someone else
        total += int(etree.fromstring(xml.encode()).findtext("vcpu") or 0)
    return total


def write_manifests(e2e: E2E, folder: str, short: str, cpus: int) -> Path:
    """A manifest folder: the local host with ``cpus`` CPUs at ratio 1, and one wide, stopped domain."""
    root = e2e.root / folder
    root.mkdir()
    host = {
        "apiVersion": "virt-reconcile/v1",
        "kind": "Host",
        "metadata": {"name": "local"},
        "spec": {
            "uri": URI,
            "capacity": {"cpus": cpus, "memory": "1TiB"},
            "overcommit": {"cpu": {"ratio": 1, "countInactive": True}},
        },
    }
    domain = {
        "apiVersion": "virt-reconcile/v1",
        "kind": "Domain",
        "metadata": {"name": e2e.name(short)},
        "spec": e2e.guest(vcpus=WIDE, state="stopped"),
    }
    (root / "manifests.yaml").write_text(yaml.safe_dump_all([host, domain], sort_keys=False))
    return root


def run_two_applies(e2e: E2E, command: list[str], env: dict[str, str]) -> tuple[list[int], int, str]:
    """Start two applies at once (one per manifest folder); their exit codes, the limit, their output."""
    limit = counted_vcpus(e2e.conn) + ROOM
    roots = [write_manifests(e2e, folder, folder, limit) for folder in ("one", "two")]
    processes = [
        subprocess.Popen(
            [*command, "apply", str(root)],
            cwd=REPO,
            env={**os.environ, "NO_COLOR": "1", **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for root in roots
    ]
    outputs = [process.communicate(timeout=180)[0] for process in processes]
    return [process.returncode for process in processes], limit, "\n".join(outputs)


def assert_one_applied_one_refused(e2e: E2E, codes: list[int], limit: int, output: str) -> None:
    assert sorted(codes) == [0, 3], output
    assert [e2e.exists("one"), e2e.exists("two")].count(True) == 1, output
    assert counted_vcpus(e2e.conn) <= limit, output
    assert "cpu.total" in output


def test_two_applies_at_once_leave_the_host_within_its_limit(e2e: E2E, tmp_path: Path) -> None:
    """Both applies plan before either applies unless the lock keeps the second out (the barrier
    makes that overlap certain): without the lock both define and the host ends over its limit."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    codes, limit, output = run_two_applies(
        e2e, [sys.executable, "-c", BARRIER_LAUNCHER], {"VR_BARRIER": str(barrier)}
    )
    assert_one_applied_one_refused(e2e, codes, limit, output)
    assert "waiting up to 600s for the lock file /run/virt-reconcile/locks/qemu_system.lock" in output


def test_two_plain_virt_reconcile_applies_at_once(e2e: E2E) -> None:
    """The installed command as people run it, twice at once: whatever the timing, one refuses."""
    codes, limit, output = run_two_applies(e2e, [str(VIRT_RECONCILE)], {})
    assert_one_applied_one_refused(e2e, codes, limit, output)


# --- the secret lease (remote hosts) on the real daemon -----------------------------------------

QUICK = lockholders.LockLimits(wait=0.5, poll=0.05, poll_max=0.1)
REMOTE = HostURI(URI)  # the lease is what a remote host gets; this daemon's secret driver holds it


@pytest.fixture
def secret_leases(conn: libvirt.virConnect):
    """The secret lease kind on the real daemon; any lease a test leaves is removed afterwards."""
    kind = leases.lease_kind(conn, REMOTE)
    assert kind.current() is None, "a virt-reconcile-lock secret is already defined on this daemon"
    yield kind
    found = kind.current()
    if found is not None:
        kind.remove(found[0])


def test_the_secret_lease_keeps_a_second_holder_out_and_names_the_first(conn, secret_leases) -> None:
    other = libvirt.open(URI)
    try:
        with lease_held_by_another_run(conn, REMOTE, QUICK) as what:
            assert what.startswith("the libvirt secret for usage 'virt-reconcile-lock' (")
            uuid = what.split("(")[1].rstrip(")")
            secret = other.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_VOLUME, "virt-reconcile-lock")
            assert secret.UUIDString() == uuid
            assert f"hostname={socket.gethostname()} pid={os.getpid()}" in secret.XMLDesc(0)
            with (
                pytest.raises(TemporaryHostError) as refused,
                leases.hypervisor_lease(other, REMOTE, "hv", QUICK),
            ):
                pass
            assert f"pid {os.getpid()} on {socket.gethostname()}" in str(refused.value)
            assert f"(lease {uuid}); gave up after waiting 0.5s" in str(refused.value)
        assert secret_leases.current() is None  # released: the secret is gone
        with leases.hypervisor_lease(other, REMOTE, "hv", QUICK):
            pass
    finally:
        other.close()


def test_a_stale_secret_lease_is_broken(conn, secret_leases, caplog) -> None:
    hour_ago = time.time() - 3600
    dead = secret_leases.create(lockholders.Holder("admin-box", 4242, hour_ago, hour_ago).text())
    with leases.hypervisor_lease(conn, REMOTE, "hv", QUICK):
        uuid, text = secret_leases.current() or ("", "")
        assert uuid != dead and f"pid={os.getpid()}" in text
    assert f"hv: breaking the libvirt secret for usage 'virt-reconcile-lock' ({dead})" in caplog.text
