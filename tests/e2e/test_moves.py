"""A move between a real libvirtd and sandbox hosts: off the old host first, never running on both."""

from __future__ import annotations

import libvirt
import yaml

from tests.helpers import write

HOSTS = [
    {
        "apiVersion": "virt-reconcile/v1",
        "kind": "Host",
        "metadata": {"name": "local"},
        "spec": {"uri": "qemu:///system"},
    },
    {
        "apiVersion": "virt-reconcile/v1",
        "kind": "Host",
        "metadata": {"name": "sbx"},
        "spec": {"uri": "sandbox:state/sbx.xml", "capacity": {"cpus": 4, "memory": "8GiB"}},
    },
]


def place(e2e, host: str, spec: dict) -> None:
    """The hosts, and the one guest on ``host``."""
    domain = {
        "apiVersion": "virt-reconcile/v1",
        "kind": "Domain",
        "metadata": {"name": e2e.name("mover"), "host": host},
        "spec": spec,
    }
    write(e2e.root, "manifests.yaml", yaml.safe_dump_all([*HOSTS, domain], sort_keys=False))


def sandbox_holds(e2e, name: str) -> tuple[bool, bool]:
    """Whether the sandbox holds ``name``, and whether it runs there."""
    state = e2e.root / "state" / "sbx.xml"
    if not state.exists():
        return False, False
    conn = libvirt.open(f"test://{state}")
    try:
        dom = conn.lookupByName(name)
        return True, bool(dom.isActive())
    except libvirt.libvirtError:
        return False, False
    finally:
        conn.close()


def test_a_running_guest_moves_from_libvirtd_to_a_sandbox_and_back(e2e):
    spec = e2e.guest(ignore_acpi=True)  # a guest that ignores the shutdown request: forced off
    place(e2e, "local", spec)
    assert e2e.cli("apply", "--shutdown-timeout", "3").code == 0
    assert e2e.console_shows("mover")

    place(e2e, "sbx", spec)
    planned = e2e.cli("plan", "--format", "json")
    assert planned.code == 2, planned.out + planned.err
    moves = [(a["action"], a["host"], a["peer"]) for a in yaml.safe_load(planned.out)["actions"]]
    assert moves[:2] == [("move", "local", "sbx"), ("move", "sbx", "local")]
    moved = e2e.cli("apply", "--shutdown-timeout", "3")
    assert moved.code == 0, moved.out + moved.err
    assert "forced off after the shutdown timeout, then undefined" in moved.out
    assert not e2e.exists("mover")  # off libvirtd: undefined, not left running as an orphan
    assert sandbox_holds(e2e, e2e.name("mover")) == (True, True)

    place(e2e, "local", spec)
    back = e2e.cli("apply", "--shutdown-timeout", "3")
    assert back.code == 0, back.out + back.err
    assert sandbox_holds(e2e, e2e.name("mover")) == (False, False)
    assert e2e.domain("mover").isActive() and e2e.console_shows("mover")
    assert e2e.cli("plan").code == 0
