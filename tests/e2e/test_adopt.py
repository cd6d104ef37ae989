"""import, backup and restore on the real libvirtd, with qcow2 images made by qemu-img."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import libvirt
import pytest
import yaml
from lxml import etree

IMAGES = Path("/var/lib/libvirt/images")


@pytest.fixture
def image(e2e):
    path = IMAGES / f"{e2e.prefix}disk.qcow2"
    IMAGES.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    yield path
    path.unlink(missing_ok=True)


def legacy_xml(name: str, image: Path) -> str:
    """A domain as virt-install or a script would have made it: no ownership metadata."""
    return f"""<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>
      <os><type arch='x86_64' machine='q35'>hvm</type></os>
      <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{image}'/>
      <target dev='vda' bus='virtio'/></disk><console type='pty'/><graphics type='vnc' autoport='yes'/>
      </devices></domain>"""


def test_import_backup_restore_on_libvirtd(e2e, conn, image, tmp_path):
    name = e2e.name("legacy")
    conn.defineXML(legacy_xml(name, image))
    e2e.manifests()
    before = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)

    imported = e2e.cli("import", "--host", "local", "--out", str(e2e.root / "imported"), name)
    assert imported.code == 0, imported.out + imported.err
    owner = etree.fromstring(conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode()).find(
        "metadata/{https://virt-reconcile.dev/xmlns/owner/v1}owner"
    )
    assert (owner.get("host"), owner.get("pending")) == ("local", "true"), "adopted, pending its first apply"
    pending = json.loads(e2e.cli("plan", "--format", "json").out)
    assert [(a["action"], [c["field"] for c in a["changes"]]) for a in pending["actions"]] == [
        ("update", ["ownership"])  # the first apply clears the pending mark, and nothing else
    ]
    assert e2e.cli("apply").code == 0
    assert e2e.cli("plan").code == 0, e2e.cli("plan").out

    manifest = e2e.root / "imported" / f"{name}.yaml"
    doc = yaml.safe_load(manifest.read_text())
    assert doc["spec"]["machine"].startswith("pc-q35-")
    doc["spec"]["vcpus"] = 2
    manifest.write_text(yaml.safe_dump(doc))
    planned = json.loads(e2e.cli("plan", "--format", "json").out)
    assert [(a["action"], [c["field"] for c in a["changes"]]) for a in planned["actions"]] == [
        ("update", ["vcpus"])
    ]
    assert e2e.cli("apply").code == 0
    after = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    old, new = etree.fromstring(before.encode()), etree.fromstring(after.encode())
    assert new.findtext("vcpu") == "2"
    for tree in (old, new):
        tree.remove(tree.find("vcpu"))
        if tree.find("metadata") is not None:
            tree.remove(tree.find("metadata"))
    assert etree.tostring(old) == etree.tostring(new), "only the vCPU count changed"

    backup = tmp_path / "backup"
    done = e2e.cli("backup", "--host", "local", "--out", str(backup), "--with-images", name)
    assert done.code == 0, done.out + done.err
    record = json.loads((backup / name / "images.json").read_text())["images"][0]
    assert record["path"] == str(image) and len(record["sha256"]) == 64

    conn.lookupByName(name).undefine()
    subprocess.run(["qemu-img", "resize", "-q", str(image), "128M"], check=True)  # changed since the backup
    changed = e2e.cli("restore", "--host", "local", "--from", str(backup))
    put_back = f"cp --sparse=always {backup.resolve() / name / record['copy']} {image}"
    assert changed.code == 1 and f"image {image} differs from the backup" in changed.out
    assert put_back in changed.out, changed.out
    image.unlink()
    missing = e2e.cli("restore", "--host", "local", "--from", str(backup))
    assert missing.code == 1 and f"image {image} is missing" in missing.out
    assert not e2e.exists("legacy")
    subprocess.run(put_back.split(), check=True)  # the image comes back from the backup, as told
    restored = e2e.cli("restore", "--host", "local", "--from", str(backup))
    assert restored.code == 0, restored.out
    assert 'pending="true"' in conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert e2e.cli("apply").code == 0  # its manifest is back: the first apply clears the mark
    assert e2e.cli("plan").code == 0
