"""The daemon's ``/status`` and metrics on a real libvirtd: a push that lowers a running guest's
vCPUs shows a pending restart (the guest keeps running as it was), and a domain removed from git with
prune off shows as an orphan, in ``/status`` and in the metrics alike."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import libvirt
from lxml import etree

from tests.daemon_helpers import DaemonProcess

WAIT = 180  # seconds: a TCG guest defined and started on a busy machine


def wait_until(daemon: DaemonProcess, holds: Callable[[dict], bool], what: str) -> dict:
    """Poll ``/status`` until ``holds`` is true of it; return that document."""
    deadline = time.monotonic() + WAIT
    document: dict = {}
    while time.monotonic() < deadline:
        document = daemon.status()
        if holds(document):
            return document
        time.sleep(0.2)
    raise AssertionError(f"never {what}: {document.get('hosts', {}).get('local')}; log {daemon.log[-10:]}")


def domain(document: dict, name: str) -> dict:
    return document.get("hosts", {}).get("local", {}).get("domains", {}).get(name, {})


def gauge(metrics: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text exposition (labels in the order given)."""
    inside = ",".join(f'{key}="{value}"' for key, value in labels.items())
    found = re.search(rf"^{name}{{{re.escape(inside)}}} (\S+)$", metrics, re.MULTILINE)
    assert found, f"no {name}{{{inside}}} in the metrics"
    return float(found.group(1))


def test_a_lowered_vcpu_count_waits_for_a_restart_and_a_removed_domain_is_an_orphan(e2e, tmp_path_factory):
    web, gone = e2e.name("web"), e2e.name("gone")
    e2e.manifests(web=e2e.guest(vcpus=2), gone=e2e.guest(state="stopped"))
    state_dir: Path = tmp_path_factory.mktemp("daemon-state")
    daemon = DaemonProcess("--source", str(e2e.root), "--interval", "1h", state_dir=state_dir / "state")
    try:
        daemon.start()
        wait_until(
            daemon,
            lambda d: (
                domain(d, web) == {"sync": "synced", "health": "running", "message": ""}
                and domain(d, gone).get("sync") == "synced"
            ),
            "web running and gone defined",
        )
        first_id = e2e.domain("web").ID()

        e2e.manifests(web=e2e.guest(vcpus=1), gone=e2e.guest(state="stopped"))  # the watched folder
        document = wait_until(
            daemon, lambda d: domain(d, web).get("sync") == "pendingRestart", "web waiting for a restart"
        )
        assert domain(document, web)["health"] == "running"
        assert web in document["hosts"]["local"]["pendingRestarts"]
        dom = e2e.domain("web")
        assert dom.isActive() and dom.ID() == first_id, "a pending restart must not restart the guest"
        assert etree.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode()).findtext("vcpu") == "1"
        assert etree.fromstring(dom.XMLDesc(0).encode()).findtext("vcpu") == "2"
        applied = next(
            e for e in document["history"] if e["result"] == "applied" and f"update {web}" in e["actions"]
        )
        assert applied["hosts"] == ["local"]

        e2e.manifests(web=e2e.guest(vcpus=1))  # gone leaves git; the host has no prune
        document = wait_until(daemon, lambda d: domain(d, gone).get("sync") == "orphan", "gone an orphan")
        assert "prune is off" in domain(document, gone)["message"] and e2e.exists("gone")
        assert domain(document, web)["sync"] == "pendingRestart"  # still, until the guest restarts
        metrics = daemon.get("/metrics")[1].decode()
        orphans = [n for n, d in document["hosts"]["local"]["domains"].items() if d["sync"] == "orphan"]
        # other tests' domains on this libvirtd (other manifest roots) count as orphans here too
        assert gauge(metrics, "virt_reconcile_orphans", host="local") >= 1
        assert gauge(metrics, "virt_reconcile_domains", host="local", sync="orphan") >= 1
        assert gone in orphans
        assert gauge(metrics, "virt_reconcile_pending_restarts", host="local") >= 1
    finally:
        daemon.stop()  # before the fixture removes the domains: the daemon would put them back
