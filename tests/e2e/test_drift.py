"""Drift on a real libvirtd: the daemon puts back what was changed behind its back, as it happens."""

from __future__ import annotations

import time

import libvirt

from tests.daemon_helpers import DaemonProcess


def wait(predicate, timeout: float = 30) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_a_guest_destroyed_by_hand_is_started_again(e2e, tmp_path):
    e2e.manifests(web=e2e.guest())
    daemon = DaemonProcess(
        "--source", str(e2e.root), "--interval", "1h", "--resync", "1h", state_dir=tmp_path / "state"
    )
    try:
        daemon.start()
        daemon.wait_for("local", result="applied", timeout=60)
        dom = e2e.domain("web")
        assert dom.isActive()
        dom.destroy()  # drift: someone pulled the plug
        seconds = wait(lambda: e2e.domain("web").isActive())
        wait(lambda: daemon.status()["hosts"]["local"]["message"].startswith("drift corrected"))
        assert seconds < 30
        metrics = daemon.get("/metrics")[1].decode()
        assert 'virt_reconcile_drift_corrections_total{host="local"} 1.0' in metrics

        # drift: redefined by hand with another vCPU count; put back (the restart is left to people)
        xml = e2e.domain("web").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
        e2e.conn.defineXML(
            xml.replace("<vcpu placement='static'>1</vcpu>", "<vcpu placement='static'>2</vcpu>")
        )
        wait(
            lambda: (
                "<vcpu placement='static'>1</vcpu>"
                in e2e.domain("web").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            )
        )
        assert daemon.terminate() == 0
    finally:
        daemon.stop()
