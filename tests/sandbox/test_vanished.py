"""A domain undefined while a host is being observed is skipped, never a host error.

The connection is the real libvirt test-driver connection of a sandbox host, wrapped so that a
domain is undefined right after the listing and before the per-domain reads: the moment a
``virsh undefine`` racing with a scan would hit.
"""

from __future__ import annotations

import libvirt
import pytest

from reconciler.adapters.libvirt import host as libvirt_host
from reconciler.adapters.libvirt.host import LibvirtHypervisor
from reconciler.spec.manifests import load_manifests
from tests.helpers import cli, host_yaml, write


class VanishingConnection:
    """A real ``virConnect`` that undefines ``victims`` once, just after the domains were listed."""

    def __init__(self, conn: libvirt.virConnect, victims: list[str]) -> None:
        self._conn = conn
        self._victims = victims

    def __getattr__(self, name: str) -> object:
        return getattr(self._conn, name)

    def getAllDomainStats(self, *args: object) -> list:  # libvirt's name
        listed = self._conn.getAllDomainStats(*args)
        while self._victims:
            self._conn.lookupByName(self._victims.pop()).undefine()
        return listed


@pytest.mark.parametrize("count", [3, 20], ids=["one-by-one", "concurrent-reads"])
def test_observe_skips_a_domain_undefined_after_the_listing(sandbox, count):
    names = [f"vm-{number:02d}" for number in range(count)]
    sandbox.domains(**{name: {"state": "stopped", "memory": "64MiB"} for name in names})
    assert cli("apply", str(sandbox.root)).code == 0
    host = load_manifests(sandbox.root).hosts["hv1"]
    with libvirt_host.connect(host, write=False) as real:
        # 20 domains and not in-process: the XML reads run in the thread pool
        racing = LibvirtHypervisor("hv1", VanishingConnection(real.conn, ["vm-01"]), in_process=count < 16)
        observed = racing.observe()  # no HostError
        assert sorted(d.name for d in observed.domains) == [n for n in names if n != "vm-01"]
        assert all(d.xml.startswith("<domain") for d in observed.domains)


def test_a_redefine_of_a_domain_undefined_meanwhile_defines_it_anew(sandbox, tmp_path):
    """The secure read before a redefine finds no domain: the XML is defined as it is."""
    write(sandbox.root, "hosts.yaml", host_yaml())
    sandbox.domains(web={"state": "stopped"})
    assert cli("apply", str(sandbox.root)).code == 0
    host = load_manifests(sandbox.root).hosts["hv1"]
    with libvirt_host.connect(host, write=False) as hypervisor:
        xml = hypervisor.secure_xml("web")
        assert xml is not None
        hypervisor.conn.lookupByName("web").undefine()
        assert hypervisor.secure_xml("web") is None
        hypervisor.define(xml)
        assert [d.name for d in hypervisor.observe().domains] == ["web"]
