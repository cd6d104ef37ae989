"""A graphics password stays on the host: in no plan, snapshot, saved plan or imported manifest;
kept through a redefine; held by backups, which only their owner can read."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import libvirt
import yaml
from lxml import etree

from reconciler.adapters.sandbox import SandboxDomain, compose_node_xml, new_node_xml
from reconciler.libvirtxml.render import render_domain
from reconciler.spec.models import DomainSpec, Owner
from tests.helpers import cli

SECRET = "s3cret-sandbox-7f1e"
SPEC = {"memory": "1GiB", "state": "stopped"}


def with_password(name: str, owner: Owner | None) -> str:
    """Our rendered domain plus a VNC display with a password, as an operator would add one."""
    root = etree.fromstring(render_domain(name, DomainSpec.model_validate(SPEC), owner).encode())
    etree.SubElement(root.find("devices"), "graphics", type="vnc", autoport="yes", passwd=SECRET)
    return etree.tostring(root, encoding="unicode")


def seed(state: Path, *xmls: str) -> None:
    """A sandbox holding these shut-off domains, their passwords included (the fixture's ``seed``
    re-reads the domains already there without their secure values)."""
    domains = [SandboxDomain(xml, active=False, autostart=False) for xml in xmls]
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(compose_node_xml(new_node_xml(16, 64 * 1024**3), domains))


def secure_xml(state: Path, name: str) -> str:
    """The domain's definition in the sandbox state file, secure values included."""
    conn = libvirt.open(f"test://{state}")
    try:
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
        return conn.lookupByName(name).XMLDesc(flags)
    finally:
        conn.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_password_reaches_no_output_and_survives_an_update(sandbox, tmp_path):
    owner = Owner(manifest="domains.yaml", spec_hash=DomainSpec.model_validate(SPEC).spec_hash())
    seed(sandbox.state, with_password("web", owner), with_password("legacy", None))
    sandbox.domains(web=SPEC)

    seen: list[str] = []
    snap = tmp_path / "snap.json"
    assert cli("snapshot", str(sandbox.root), "--out", str(snap)).code == 0
    seen.append(snap.read_text())
    imported = cli("import", str(sandbox.root), "--host", "hv1", "--out", str(tmp_path / "imp"), "legacy")
    assert imported.code == 0, imported.out + imported.err
    seen += [imported.out, (tmp_path / "imp" / "legacy.yaml").read_text()]
    sandbox.domains(web={**SPEC, "vcpus": 2})
    for fmt in ("text", "json", "markdown"):
        planned = cli("plan", str(sandbox.root), "--format", fmt)
        assert planned.code == 2, planned.out + planned.err
        seen += [planned.out, planned.err]
    saved = tmp_path / "plan.json"
    assert cli("plan", str(sandbox.root), "--out", str(saved)).code == 2
    assert "2</vcpu>" in saved.read_text(), "the saved plan holds the update's XML"
    seen.append(saved.read_text())
    assert not [text for text in seen if SECRET in text]

    applied = cli("apply", str(sandbox.root), "--plan", str(saved))
    assert applied.code == 0, applied.out + applied.err
    updated = etree.fromstring(secure_xml(sandbox.state, "web").encode())
    assert updated.findtext("vcpu") == "2"
    assert updated.find("devices/graphics").get("passwd") == SECRET, "the redefine kept the password"
    assert SECRET in secure_xml(sandbox.state, "legacy"), "import marks without redefining"


def test_backups_hold_secrets_and_only_their_owner_reads_them(sandbox, tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(b"disk" * 1024)
    spec = DomainSpec.model_validate({**SPEC, "disks": [{"path": str(image), "format": "raw"}]})
    root = etree.fromstring(render_domain("web", spec, None).encode())
    etree.SubElement(root.find("devices"), "graphics", type="vnc", passwd=SECRET)
    seed(sandbox.state, etree.tostring(root, encoding="unicode"))
    out = tmp_path / "backup"
    done = cli("backup", str(sandbox.root), "--host", "hv1", "--out", str(out), "--with-images")
    assert done.code == 0, done.out + done.err
    assert SECRET in (out / "web" / "domain.xml").read_text()
    record = json.loads((out / "web" / "images.json").read_text())
    copy = out / "web" / record["images"][0]["copy"]
    assert {path.name: mode(path) for path in (out, out / "web", copy.parent)} == {
        "backup": 0o700,
        "web": 0o700,
        "images": 0o700,
    }
    files = [out / "web" / "domain.xml", out / "web" / "images.json", copy]
    assert {path.name: mode(path) for path in files} == {name.name: 0o600 for name in files}
    assert yaml.safe_load(done.out) is not None and SECRET not in done.out
