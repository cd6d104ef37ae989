"""An import while the daemon follows the manifests with prune on: the adopted domain waits for git."""

from __future__ import annotations

import time

import libvirt
import yaml
from lxml import etree

from reconciler.libvirtxml.render import render_domain
from reconciler.spec.models import DomainSpec
from tests.daemon_helpers import DaemonProcess
from tests.helpers import write

OWNER_TAG = "metadata/{https://virt-reconcile.dev/xmlns/owner/v1}owner"


def manifests(e2e, *extra: dict, note: str = "") -> None:
    host = {
        "apiVersion": "virt-reconcile/v1",
        "kind": "Host",
        "metadata": {"name": "local"},
        "spec": {"uri": "qemu:///system", "prune": True},
    }
    text = yaml.safe_dump_all([host, *extra], sort_keys=False)
    write(e2e.root, "manifests.yaml", text + (f"# {note}\n" if note else ""))


def passes(daemon: DaemonProcess) -> int:
    return sum(1 for line in daemon.log if line.startswith("local: "))


def wait_for_pass(daemon: DaemonProcess, after: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while passes(daemon) <= after:
        assert time.monotonic() < deadline, daemon.log
        time.sleep(0.1)


def wait_for_line(daemon: DaemonProcess, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in line for line in daemon.log):
        assert time.monotonic() < deadline, daemon.log
        time.sleep(0.1)


def test_an_import_is_not_pruned_before_its_manifest_reaches_the_daemon(e2e, conn, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("outside-the-manifests")  # e2e.root is the daemon's source
    manifests(e2e)
    daemon = DaemonProcess(
        "--source", str(e2e.root), "--interval", "1h", "--resync", "1h", state_dir=tmp_path / "state"
    ).start()
    try:
        daemon.wait_for("local", timeout=60, result="unchanged")
        name = e2e.name("adopted")
        spec = DomainSpec.model_validate({"memory": "128MiB", "type": "qemu", "state": "stopped"})
        conn.defineXML(render_domain(name, spec, None))
        imported = e2e.cli("import", "--host", "local", "--out", str(tmp_path / "not-pushed-yet"), name)
        assert imported.code == 0, imported.out + imported.err
        marked = etree.fromstring(conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
        assert marked.find(OWNER_TAG).get("pending") == "true", etree.tostring(marked.find("metadata"))

        before = passes(daemon)
        manifests(e2e, note="a new revision")  # as a push would: a pass with prune on, the import not in it
        wait_for_pass(daemon, before)
        owner = etree.fromstring(conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
        assert owner.find(OWNER_TAG).get("pending") == "true", "still adopted-pending, and still defined"
        assert "undefine" not in "\n".join(daemon.log)

        before = passes(daemon)
        pushed = yaml.safe_load((tmp_path / "not-pushed-yet" / f"{name}.yaml").read_text())
        manifests(e2e, pushed)  # its manifest arrives: the first apply clears the mark
        wait_for_line(daemon, f"1 action(s): update {name}")
        owner = etree.fromstring(conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
        assert owner.find(OWNER_TAG).get("pending") is None and owner.find(OWNER_TAG).get("host") == "local"
    finally:
        daemon.stop()
