"""Pending restarts on a real libvirtd: lowering a running guest's vCPUs and memory waits for its
restart; every plan says so until ``apply --restart-pending`` restarts it gracefully."""

from __future__ import annotations

import json

import libvirt
from lxml import etree

KIB_320M, KIB_256M = 320 * 1024, 256 * 1024


def live(dom: libvirt.virDomain) -> etree._Element:
    return etree.fromstring(dom.XMLDesc(0).encode())


def pending(e2e) -> list[str]:
    planned = e2e.cli("plan", "--format", "json")
    assert planned.code == 0, planned.out + planned.err  # a pending restart alone is no change
    hosts: dict[str, dict[str, list[str]]] = json.loads(planned.out)["hosts"]
    return hosts["local"]["pendingRestarts"]


def test_lowered_guests_wait_for_a_restart_until_apply_restart_pending(e2e):
    e2e.manifests(web=e2e.guest(vcpus=2, memory="320MiB"), db=e2e.guest(vcpus=2))
    assert e2e.cli("apply").code == 0
    web, db = e2e.domain("web"), e2e.domain("db")
    assert e2e.console_shows("web") and e2e.console_shows("db")
    first = {"web": web.ID(), "db": db.ID()}

    e2e.manifests(web=e2e.guest(vcpus=1, memory="256MiB"), db=e2e.guest(vcpus=1))
    applied = e2e.cli("apply")
    assert applied.code == 0 and "takes effect at the next restart" in applied.out, applied.out
    assert live(web).findtext("vcpu") == "2" and live(web).findtext("memory") == str(KIB_320M)
    shown = e2e.cli("plan")
    assert f"⟳ pending restart {e2e.name('web')}: vcpus 2 → 1; memory 320MiB → 256MiB" in shown.out
    assert f"⟳ pending restart {e2e.name('db')}: vcpus 2 → 1" in shown.out
    assert sorted(pending(e2e)) == [e2e.name("db"), e2e.name("web")]

    db.reset()  # a reset inside the same QEMU process is no restart: the new definition still waits
    assert db.ID() == first["db"] and e2e.name("db") in pending(e2e)
    assert e2e.console_shows("db"), "the reset guest did not boot again"  # ready for the power button

    restarted = e2e.cli("apply", "--restart-pending", "--max-unavailable", "1", "--shutdown-timeout", "60")
    assert restarted.code == 0, restarted.out + restarted.err
    for short in ("web", "db"):
        assert f"⟳ restart {e2e.name(short)}" in restarted.out
    assert restarted.out.count("shut down gracefully, started again") == 2, restarted.out
    assert pending(e2e) == []
    web, db = e2e.domain("web"), e2e.domain("db")
    assert web.isActive() and db.isActive()
    assert web.ID() != first["web"] and db.ID() != first["db"]
    assert live(web).findtext("vcpu") == "1" and live(web).findtext("memory") == str(KIB_256M)
    assert live(db).findtext("vcpu") == "1"
    assert e2e.console_shows("web"), "the restarted guest did not boot"
    assert e2e.cli("plan").code == 0


def test_the_marked_definition_running_is_no_pending_restart_whatever_its_id(e2e):
    """Ids are no identity: after a libvirtd restart QEMU's next id goes on from the highest running
    one, and after a host reboot they start at 1 again, so a restarted guest may get the very id its
    restart mark recorded. Here the mark is made to name the running id by hand (restarting libvirtd
    is not for a shared test machine); what runs is told by the live XML's ownership, not the id."""
    e2e.manifests(web=e2e.guest(vcpus=2))
    assert e2e.cli("apply").code == 0
    e2e.manifests(web=e2e.guest(vcpus=1))
    assert "takes effect at the next restart" in e2e.cli("apply").out
    web = e2e.domain("web")
    persistent = web.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    marked = f'restartInstance="{web.ID()}"'
    assert marked in persistent and "restartInstance" not in web.XMLDesc(0)  # live: the older owner
    assert pending(e2e) == [e2e.name("web")]

    web.destroy()
    web.create()  # restarted by hand: it runs the marked definition, under a new id
    assert pending(e2e) == []
    e2e.conn.defineXML(persistent.replace(marked, f'restartInstance="{web.ID()}"'))
    assert f'restartInstance="{web.ID()}"' in web.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert pending(e2e) == [], "the running id is the mark's, but it runs the marked definition"
    assert live(web).findtext("vcpu") == "1"
