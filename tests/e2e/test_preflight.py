"""Pre-flight on the real libvirtd: what the host lacks is found before anything is defined or started."""

import contextlib
import shutil

import libvirt
import pytest

from reconciler.adapters.libvirt.host import connect
from reconciler.engine.preflight import Preflight, preflight, wanted_paths
from reconciler.libvirtxml.render import render_domain
from reconciler.spec.models import Domain, Host
from tests.e2e.conftest import GUEST, URI
from tests.helpers import domain_model

HOST = Host.model_validate(
    {"apiVersion": "virt-reconcile/v1", "kind": "Host", "metadata": {"name": "local"}, "spec": {"uri": URI}}
)


def check(*domains: Domain) -> Preflight:
    """Pre-flight of ``domains`` against this machine's libvirtd, as the planner will run it."""
    with connect(HOST, write=False) as hypervisor:
        environment = hypervisor.environment(wanted_paths(domains))
    return preflight({domain.metadata.name: domain for domain in domains}, environment)


def test_the_e2e_guest_passes_and_a_missing_network_bridge_or_disk_is_named(e2e):
    name = e2e.name("web")
    missing_disk = f"{GUEST}/{name}-missing.qcow2"
    passing = check(domain_model(name, **e2e.guest()))
    assert passing.errors == () and passing.warnings == ()
    web = domain_model(
        name,
        **e2e.guest(
            disks=[{"path": missing_disk, "format": "qcow2"}],
            interfaces=[{"network": f"{name}-net"}, {"bridge": "vrnobr0"}],
        ),
    )
    result = check(web)
    network = f"{name}: spec.interfaces[0].network: network '{name}-net' does not exist on the host ("
    assert result.errors[0].startswith(network)  # then the host's own networks
    assert result.errors[1:] == (
        f"{name}: spec.interfaces[1].bridge: bridge 'vrnobr0' does not exist on the host",
        f"{name}: spec.disks[0].path: {missing_disk} does not exist on the host",
    )


def test_an_inactive_network_blocks_a_domain_that_should_run(e2e, conn):
    network = e2e.name("net")
    conn.networkDefineXML(f"<network><name>{network}</name></network>")  # defined, never started
    try:
        running = check(domain_model(e2e.name("web"), **e2e.guest(interfaces=[{"network": network}])))
        assert running.errors == (
            f"{e2e.name('web')}: spec.interfaces[0].network: network '{network}' is not active, so the "
            f"domain cannot start (virsh net-start {network})",
        )
        stopped = domain_model(
            e2e.name("web"), **e2e.guest(interfaces=[{"network": network}], state="stopped")
        )
        assert check(stopped).errors == ()
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.networkLookupByName(network).undefine()


def test_a_kernel_qemu_cannot_reach_is_an_error_and_starting_it_really_fails(e2e, conn, tmp_path):
    """tmp_path lies under pytest's mode-700 folder, as a clone under /root would: QEMU (libvirt-qemu)
    cannot enter it. Pre-flight says so; libvirt itself only finds out when QEMU starts."""
    kernel = tmp_path / "vmlinuz"
    shutil.copy(e2e.kernel, kernel)
    name = e2e.name("hidden")
    spec = e2e.guest()
    spec["boot"]["kernel"] = str(kernel)
    hidden = domain_model(name, **spec)
    [error] = check(hidden).errors
    assert error.startswith(f"{name}: spec.boot.kernel: QEMU cannot read {kernel}: folder ")
    assert "is not searchable by" in error
    conn.defineXML(render_domain(name, hidden.spec, None))
    with pytest.raises(libvirt.libvirtError, match="Permission denied"):
        e2e.domain("hidden").create()
