"""A VNC password on a real libvirtd stays there: no plan, snapshot, saved plan, imported manifest,
daemon status, log or published snapshot holds it; updates (CLI and daemon) keep it; a backup
holds it, readable by its owner only."""

from __future__ import annotations

import json
import stat
import uuid
from pathlib import Path

import libvirt
from lxml import etree

from reconciler.libvirtxml.render import render_domain
from reconciler.spec.models import DomainSpec, Owner
from tests.daemon_helpers import DaemonProcess

SECURE = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE


def define_with_password(conn: libvirt.virConnect, name: str, spec: dict, secret: str, managed: bool) -> None:
    """Define ``name`` as virt-reconcile would (owner metadata when ``managed``), plus a VNC display
    with a password, as an operator adds one."""
    desired = DomainSpec.model_validate(spec)
    owner = Owner(manifest="manifests.yaml", spec_hash=desired.spec_hash(), host="local") if managed else None
    root = etree.fromstring(render_domain(name, desired, owner).encode())
    etree.SubElement(root.find("devices"), "graphics", type="vnc", autoport="yes", passwd=secret)
    conn.defineXML(etree.tostring(root, encoding="unicode"))


def password(conn: libvirt.virConnect, name: str) -> str | None:
    root = etree.fromstring(conn.lookupByName(name).XMLDesc(SECURE).encode())
    return root.find("devices/graphics").get("passwd")


def files_holding(folder: Path, secret: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_a_vnc_password_stays_on_the_host(e2e, conn, tmp_path_factory):
    secret = f"s3{uuid.uuid4().hex[:6]}"  # QEMU takes VNC passwords of 8 characters at most
    web, legacy = e2e.name("web"), e2e.name("legacy")
    e2e.manifests(web=e2e.guest(state="stopped"))
    define_with_password(conn, web, e2e.guest(state="stopped"), secret, managed=True)
    define_with_password(conn, legacy, e2e.guest(state="stopped"), secret, managed=False)
    unchanged = e2e.cli("plan", "--format", "json")
    fields = {change["field"] for a in json.loads(unchanged.out)["actions"] for change in a["changes"]}
    assert fields <= {"ownership"}, unchanged.out  # the password is no difference

    out = tmp_path_factory.mktemp("out")  # outside the manifest folder (e2e.root)
    seen = [e2e.cli("snapshot", "--out", str(out / "snapshot.json"))]
    seen.append(e2e.cli("import", "--host", "local", "--out", str(out / "imported"), legacy))
    e2e.manifests(web=e2e.guest(state="stopped", vcpus=2))
    seen += [e2e.cli("plan", "--format", fmt) for fmt in ("text", "json", "markdown")]
    seen.append(e2e.cli("plan", "--out", str(out / "saved-plan.json")))
    assert [run.code for run in seen] == [0, 0, 2, 2, 2, 2], [run.out + run.err for run in seen]
    assert not [run for run in seen if secret in run.out + run.err]
    assert (out / "imported" / f"{legacy}.yaml").exists()
    assert files_holding(out, secret) == []
    assert password(conn, legacy) == secret, "import marks the domain without redefining it"

    applied = e2e.cli("apply", "--plan", str(out / "saved-plan.json"))
    assert applied.code == 0, applied.out + applied.err
    assert etree.fromstring(e2e.domain("web").XMLDesc(SECURE).encode()).findtext("vcpu") == "2"
    assert password(conn, web) == secret, "the redefine kept the password"

    e2e.manifests(web=e2e.guest(state="stopped", vcpus=2, memory="320MiB"))
    state, published = out / "state", out / "published"
    daemon = DaemonProcess(
        "--source", str(e2e.root), "--interval", "1h", "--resync", "1h", "--snapshot-to", str(published),
        state_dir=state,
    )  # fmt: skip
    try:
        daemon.start()
        daemon.wait_for("local", result="applied", timeout=60)
        answers = [daemon.get(path)[1].decode() for path in ("/status", "/metrics", "/healthz")]
        assert daemon.terminate() == 0
    finally:
        daemon.stop()
    assert etree.fromstring(e2e.domain("web").XMLDesc(SECURE).encode()).findtext("memory") == "327680"
    assert password(conn, web) == secret, "the daemon's redefine kept the password"
    assert any(published.rglob("*.json")), "the daemon published a snapshot"
    assert not [text for text in [*answers, *daemon.log] if secret in text]
    assert files_holding(state, secret) == [] and files_holding(published, secret) == []

    backup = out / "backup"
    done = e2e.cli("backup", "--host", "local", "--out", str(backup), web)
    assert done.code == 0, done.out + done.err
    assert files_holding(backup, secret) == [backup / web / "domain.xml"]
    modes = {p.relative_to(out): stat.S_IMODE(p.stat().st_mode) for p in [backup, *backup.rglob("*")]}
    assert modes == {
        Path("backup"): 0o700,
        Path("backup", web): 0o700,
        Path("backup", web, "domain.xml"): 0o600,
        Path("backup", web, "images.json"): 0o600,
    }
