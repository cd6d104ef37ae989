"""import, backup and restore on the sandbox host."""

from __future__ import annotations

import json
import uuid

import yaml
from lxml import etree

from tests.helpers import cli, host_yaml, shared_domain_files, write

PLAIN = """<domain type='kvm'><name>{name}</name><uuid>{uuid}</uuid>
<memory unit='KiB'>1048576</memory><currentMemory unit='KiB'>524288</currentMemory><vcpu>2</vcpu>
<os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
<devices>
  <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{image}'/>
    <target dev='vda' bus='virtio'/>
    <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/></disk>
  <interface type='network'><mac address='52:54:00:aa:bb:cc'/><source network='default'/>
    <model type='virtio'/></interface>
  <graphics type='vnc' port='-1' autoport='yes' passwd='secret'/>
  <memballoon model='virtio'/>
</devices></domain>"""


def plain(name: str, image: str = "/nonexistent/disk.qcow2") -> str:
    return PLAIN.format(name=name, uuid=uuid.uuid5(uuid.NAMESPACE_DNS, name), image=image)


def test_import_then_plan_is_empty_and_the_domain_is_managed(sandbox):
    sandbox.seed(plain("legacy"), running=True)
    sandbox.seed(plain("other"), running=False)
    sandbox.domains()
    before = sandbox.view()["legacy"].xml
    result = cli("import", str(sandbox.root), "--host", "hv1", "--out", str(sandbox.root / "imported"))
    assert result.code == 0, result.out + result.err
    assert "2 imported" in result.out
    doc = yaml.safe_load((sandbox.root / "imported" / "legacy.yaml").read_text())
    assert doc["metadata"] == {"name": "legacy", "host": "hv1"}
    spec = doc["spec"]
    assert (spec["vcpus"], spec["memory"], spec["currentMemory"], spec["state"]) == (
        2,
        "1GiB",
        "512MiB",
        "running",
    )
    assert spec["machine"] == "pc-q35-7.2" and spec["interfaces"][0]["mac"] == "52:54:00:aa:bb:cc"
    after = sandbox.view()["legacy"]
    assert after.active, "import never restarts a domain"
    assert 'manifest="imported/legacy.yaml"' in after.xml
    strip = etree.fromstring(after.xml.encode())
    strip.remove(strip.find("metadata"))
    assert etree.tostring(strip) == etree.tostring(etree.fromstring(before.encode()))
    assert cli("plan", str(sandbox.root)).code == 0


def test_import_refuses_managed_domains_and_non_empty_folders(sandbox):
    sandbox.seed(plain("legacy"))
    sandbox.domains()
    out = sandbox.root / "imported"
    assert cli("import", str(sandbox.root), "--host", "hv1", "--out", str(out)).code == 0
    again = cli("import", str(sandbox.root), "--host", "hv1", "--out", str(sandbox.root / "x"), "legacy")
    assert again.code == 1 and "already managed" in again.out
    busy = cli("import", str(sandbox.root), "--host", "hv1", "--out", str(out), "legacy", "--force")
    assert busy.code == 0
    assert (
        cli("import", str(sandbox.root), "--host", "hv1", "--out", str(sandbox.root / "y"), "nope").code == 1
    )
    assert cli("import", str(sandbox.root), "--host", "hv9", "--out", str(sandbox.root / "z")).code == 1
    sandbox.seed(plain("fresh"))
    (sandbox.root / "full").mkdir()
    (sandbox.root / "full" / "keep.txt").write_text("x")
    refused = cli("import", str(sandbox.root), "--host", "hv1", "--out", str(sandbox.root / "full"), "fresh")
    assert refused.code == 1 and "not empty" in refused.err
    assert "vr:owner" not in sandbox.view()["fresh"].xml, "nothing was marked"


def test_imported_corpus_plans_to_zero_and_a_change_alters_only_that(sandbox):
    write(sandbox.root, "hosts.yaml", host_yaml(cpus=128, memory="256GiB"))  # room for the whole corpus
    names = []
    for index, path in enumerate(shared_domain_files()):
        root = etree.fromstring(path.read_bytes())
        name = f"legacy-{index:02d}"
        root.find("name").text = name
        if root.find("uuid") is not None:
            root.find("uuid").text = str(uuid.uuid5(uuid.NAMESPACE_DNS, name))
            for entry in root.iterfind("sysinfo/system/entry[@name='uuid']"):
                entry.text = root.find("uuid").text
        sandbox.seed(etree.tostring(root, encoding="unicode"), running=False)
        names.append(name)
    sandbox.domains()
    imported = cli("import", str(sandbox.root), "--host", "hv1", "--out", str(sandbox.root / "imported"))
    assert imported.code == 0, imported.out
    assert cli("plan", str(sandbox.root)).code == 0
    before = {name: view.xml for name, view in sandbox.view().items()}
    manifest = sandbox.root / "imported" / "legacy-00.yaml"
    doc = yaml.safe_load(manifest.read_text())
    doc["spec"]["vcpus"] += 1
    manifest.write_text(yaml.safe_dump(doc))
    planned = json.loads(cli("plan", str(sandbox.root), "--format", "json").out)
    assert [(a["action"], a["domain"], [c["field"] for c in a["changes"]]) for a in planned["actions"]] == [
        ("update", "legacy-00", ["vcpus"])
    ]
    assert cli("apply", str(sandbox.root)).code == 0
    after = {name: view.xml for name, view in sandbox.view().items()}
    assert {n for n in names if after[n] != before[n]} == {"legacy-00"}


def test_backup_with_images_and_restore(sandbox, tmp_path):
    image = tmp_path / "disk.qcow2"
    image.write_bytes(b"QFI\xfb" + bytes(3 * 1024 * 1024) + b"data")
    sandbox.seed(plain("keep", str(image)))
    sandbox.domains()
    cli("import", str(sandbox.root), "--host", "hv1", "--out", str(sandbox.root / "imported"), "keep")
    backup = tmp_path / "backup"
    done = cli("backup", str(sandbox.root), "--host", "hv1", "--out", str(backup), "--with-images")
    assert done.code == 0, done.out + done.err
    record = json.loads((backup / "keep" / "images.json").read_text())["images"][0]
    assert (
        record["path"] == str(image)
        and record["size"] == image.stat().st_size
        and len(record["sha256"]) == 64
    )
    copy = backup / "keep" / record["copy"]
    assert copy.read_bytes() == image.read_bytes()
    assert copy.stat().st_blocks * 512 < image.stat().st_size, "the copy keeps the image's holes"
    assert "passwd='secret'" in (backup / "keep" / "domain.xml").read_text()  # the full XML

    exists = cli("restore", str(sandbox.root), "--host", "hv1", "--from", str(backup))
    assert exists.code == 1 and "never overwritten" in exists.out

    # the domain disappears (managed, so --allow-delete removes it), then comes back from the backup
    write(sandbox.root, "imported/keep.yaml", "# gone\n")
    assert cli("apply", str(sandbox.root), "--allow-delete").code == 0
    assert "keep" not in sandbox.view()
    image.write_bytes(image.read_bytes() + b"changed")
    changed = cli("restore", str(sandbox.root), "--host", "hv1", "--from", str(backup))
    assert changed.code == 1 and f"image {image} changed since the backup" in changed.out
    image.unlink()
    missing = cli("restore", str(sandbox.root), "--host", "hv1", "--from", str(backup))
    assert missing.code == 1 and f"image {image} is missing" in missing.out
    assert "keep" not in sandbox.view()
    forced = cli(
        "restore", str(sandbox.root), "--host", "hv1", "--from", str(backup), "--allow-missing-images"
    )
    assert forced.code == 0
    restored = sandbox.view()["keep"]
    assert 'manifest="imported/keep.yaml"' in restored.xml, "ownership metadata kept from the backup"


def test_backup_refuses_bad_input_and_writes_nothing(sandbox, tmp_path):
    sandbox.seed(plain("keep"))
    sandbox.domains()
    out = tmp_path / "b"
    assert cli("backup", str(sandbox.root), "--host", "hv1", "--out", str(out), "nope").code == 1
    assert not out.exists()
    assert cli("backup", str(sandbox.root), "--host", "hv1", "--out", str(out)).code == 0
    again = cli("backup", str(sandbox.root), "--host", "hv1", "--out", str(out))
    assert again.code == 1 and "not empty" in again.err
    assert cli("backup", str(sandbox.root), "--host", "hv1", "--out", str(out), "--force").code == 0
    (out / "keep" / "domain.xml").write_text("<network/>")
    broken = cli("restore", str(sandbox.root), "--host", "hv1", "--from", str(out))
    assert broken.code == 1 and "unreadable backup entry" in broken.err
    assert cli("restore", str(sandbox.root), "--host", "hv1", "--from", str(tmp_path / "none")).code == 1
