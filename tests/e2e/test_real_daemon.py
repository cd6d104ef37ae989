"""virt-reconcile against a real libvirtd with QEMU guests: converge, balloon, update, stop, undefine."""

from __future__ import annotations

import json

import libvirt
from lxml import etree

KIB_256M, KIB_128M = 256 * 1024, 128 * 1024


def inactive(dom: libvirt.virDomain) -> etree._Element:
    return etree.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())


def live(dom: libvirt.virDomain) -> etree._Element:
    return etree.fromstring(dom.XMLDesc(0).encode())


def test_apply_boots_a_guest_and_converges_without_perpetual_diff(e2e):
    e2e.manifests(web=e2e.guest(machine="q35"))
    applied = e2e.cli("apply")
    assert applied.code == 0, applied.out + applied.err
    dom = e2e.domain("web")
    assert dom.isActive()
    assert e2e.console_shows("web"), "the guest did not print its ready marker"
    # libvirt expanded the machine type and added controllers, addresses and a uuid: none is a change
    assert inactive(dom).find("os/type").get("machine").startswith("pc-q35-")
    replanned = e2e.cli("plan")
    assert replanned.code == 0, replanned.out


def test_balloon_is_live_and_persistent_without_restart(e2e):
    e2e.manifests(web=e2e.guest())
    assert e2e.cli("apply").code == 0
    dom = e2e.domain("web")
    assert e2e.console_shows("web")
    first_id = dom.ID()
    assert e2e.wait_balloon("web", KIB_256M) == KIB_256M

    e2e.manifests(web=e2e.guest(currentMemory="128MiB"))
    planned = json.loads(e2e.cli("plan", "--format", "json").out)
    assert [a["action"] for a in planned["actions"]] == ["balloon"]
    assert e2e.cli("apply").code == 0
    assert e2e.wait_balloon("web", KIB_128M) == KIB_128M, "the guest's balloon did not follow the target"
    assert dom.ID() == first_id, "a balloon must never restart the guest"
    assert inactive(dom).findtext("currentMemory") == str(KIB_128M)
    assert e2e.cli("plan").code == 0

    e2e.manifests(web=e2e.guest(currentMemory="256MiB"))
    assert e2e.cli("apply").code == 0
    assert e2e.wait_balloon("web", KIB_256M) == KIB_256M
    assert dom.ID() == first_id


def test_update_needing_a_restart_changes_config_and_keeps_the_guest_running(e2e):
    e2e.manifests(web=e2e.guest())
    assert e2e.cli("apply").code == 0
    dom = e2e.domain("web")
    first_id = dom.ID()
    e2e.manifests(web=e2e.guest(vcpus=2))
    planned = json.loads(e2e.cli("plan", "--format", "json").out)
    assert [(a["action"], a["restart"]) for a in planned["actions"]] == [("update", True)]
    applied = e2e.cli("apply")
    assert applied.code == 0 and "takes effect at the next restart" in applied.out
    assert inactive(dom).findtext("vcpu") == "2"
    assert live(dom).findtext("vcpu") == "1"
    assert dom.isActive() and dom.ID() == first_id
    assert e2e.cli("plan").code == 0


def test_stop_gracefully_or_by_force_then_start_again(e2e):
    e2e.manifests(polite=e2e.guest(), stubborn=e2e.guest(ignore_acpi=True))
    assert e2e.cli("apply").code == 0
    assert e2e.console_shows("polite") and e2e.console_shows("stubborn")
    e2e.manifests(polite=e2e.guest(state="stopped"), stubborn=e2e.guest(ignore_acpi=True, state="stopped"))
    stopped = e2e.cli("apply", "--shutdown-timeout", "5")
    assert stopped.code == 0, stopped.out
    assert f"< stop {e2e.name('polite')}: shut down gracefully" in stopped.out
    assert f"< stop {e2e.name('stubborn')}: forced off after the shutdown timeout" in stopped.out
    assert not e2e.domain("polite").isActive() and not e2e.domain("stubborn").isActive()
    e2e.manifests(polite=e2e.guest(), stubborn=e2e.guest(ignore_acpi=True))
    assert e2e.cli("apply").code == 0
    assert e2e.domain("polite").isActive() and e2e.domain("stubborn").isActive()
    assert e2e.cli("plan").code == 0


def test_undefine_a_running_guest_with_allow_delete(e2e):
    e2e.manifests(keep=e2e.guest(state="stopped"), gone=e2e.guest())
    assert e2e.cli("apply").code == 0
    assert e2e.console_shows("gone")
    e2e.manifests(keep=e2e.guest(state="stopped"))
    kept = e2e.cli("apply")
    assert kept.code == 0 and "orphan" in kept.out and e2e.exists("gone")
    removed = e2e.cli("apply", "--allow-delete", "--shutdown-timeout", "20")
    assert removed.code == 0, removed.out
    assert f"- undefine {e2e.name('gone')}" in removed.out and "then undefined" in removed.out
    assert not e2e.exists("gone") and e2e.exists("keep")


def test_policy_uses_the_real_hosts_numbers(e2e, conn):
    cpus = conn.getInfo()[2]
    kernel_kib = int(conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS)["total"])
    e2e.manifests(wide=e2e.guest(vcpus=cpus + 1, state="stopped"))
    refused = e2e.cli("plan", "--format", "json")
    assert refused.code == 3
    policy = json.loads(refused.out)["hosts"]["local"]["policy"]
    assert policy["cpu.perDomain"]["limit"] == cpus
    # memory comes from the kernel's total (node memory stats), not node info's NUMA cell
    assert policy["memory.commit"]["limit"] == kernel_kib * 1024 - 1024**3
    assert not e2e.exists("wide")
