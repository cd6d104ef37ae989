"""import, backup and restore on the sandbox host."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from lxml import etree

from reconciler.adapters.libvirt import host as libvirt_host
from reconciler.cli import main
from reconciler.ops.adopt import BackupRequest, backup_domains
from reconciler.spec.manifests import load_manifests
from tests.helpers import cli, host_yaml, shared_domain_files, write
from tests.sandbox.conftest import Sandbox

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


class SecondHost(Sandbox):
    """The sandbox host hv2 beside the fixture's hv1, to restore onto."""

    @property
    def state(self) -> Path:
        return self.root / "state" / "hv2.xml"


def only_ownership_changes(root) -> bool:
    """Whether the plan changes nothing but ownership records (an import's pending mark cleared)."""
    planned = json.loads(cli("plan", str(root), "--format", "json").out)
    return {change["field"] for a in planned["actions"] for change in a["changes"]} <= {"ownership"}


def plain(name: str, image: str | None = None) -> str:
    """An unmanaged domain as a script would have defined it, with a disk image of its own."""
    image = image or f"/nonexistent/{name}.qcow2"
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
    assert only_ownership_changes(sandbox.root), "the manifests say what libvirt holds"
    assert cli("apply", str(sandbox.root)).code == 0  # the first apply clears the pending mark
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
        for source in root.iterfind("devices/disk/source"):  # one disk image, one domain
            for key in ("file", "dev"):
                if source.get(key, "").startswith("/"):
                    folder, _, base = source.get(key).rpartition("/")
                    source.set(key, f"{folder}/{name}-{base}")
        sandbox.seed(etree.tostring(root, encoding="unicode"), running=False)
        names.append(name)
    sandbox.domains()
    imported = cli("import", str(sandbox.root), "--host", "hv1", "--out", str(sandbox.root / "imported"))
    assert imported.code == 0, imported.out
    assert only_ownership_changes(sandbox.root)
    assert cli("apply", str(sandbox.root)).code == 0
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
    assert cli("apply", str(sandbox.root)).code == 0  # no longer pending: it may be pruned
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
    assert cli("apply", str(sandbox.root), "--allow-delete", "--allow-mass-delete").code == 0
    assert "keep" not in sandbox.view()
    image.write_bytes(image.read_bytes() + b"changed")
    changed = cli("restore", str(sandbox.root), "--host", "hv1", "--from", str(backup))
    put_back = f"cp --sparse=always {copy} {image}"
    assert changed.code == 1 and f"image {image} differs from the backup" in changed.out
    assert "is missing" not in changed.out and put_back in changed.out.splitlines()[1], changed.out
    image.unlink()
    missing = cli("restore", str(sandbox.root), "--host", "hv1", "--from", str(backup))
    assert missing.code == 1 and f"image {image} is missing" in missing.out and put_back in missing.out
    assert "keep" not in sandbox.view()
    subprocess.run(put_back.split(), check=True)  # what the message says to do
    restored = cli("restore", str(sandbox.root), "--host", "hv1", "--from", str(backup))
    assert restored.code == 0, restored.out
    back = sandbox.view()["keep"]
    assert 'manifest="imported/keep.yaml"' in back.xml, "ownership metadata kept from the backup"
    assert back.active, "it was running when backed up"
    assert image.stat().st_blocks * 512 < image.stat().st_size, "put back sparse"
    kept = cli("plan", str(sandbox.root), "--allow-delete", "--allow-mass-delete")
    assert kept.code == 0 and "adopted (imported or restored)" in kept.out, "not pruned again at once"


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


def test_a_changed_image_without_a_copy_in_the_backup_gets_no_command(sandbox, tmp_path):
    image = tmp_path / "disk.qcow2"
    image.write_bytes(b"QFI\xfb" + b"x" * 4096)
    sandbox.seed(plain("keep", str(image)), running=False)
    sandbox.domains()
    assert cli("backup", str(sandbox.root), "--host", "hv1", "--out", str(tmp_path / "b")).code == 0
    write(sandbox.root, "hosts.yaml", host_yaml() + "---\n" + host_yaml("hv2", state="state/hv2.xml"))
    image.write_bytes(b"changed")
    changed = cli("restore", str(sandbox.root), "--host", "hv2", "--from", str(tmp_path / "b"))
    assert changed.code == 1 and f"image {image} differs from the backup" in changed.out
    assert "cp " not in changed.out


def test_restore_gives_back_autostart_and_run_state(sandbox, tmp_path):
    sandbox.domains(
        up={"state": "running", "autostart": True},
        down={"state": "stopped", "autostart": True},
        plain={"state": "stopped"},
    )
    assert cli("apply", str(sandbox.root)).code == 0
    backup = tmp_path / "backup"
    assert cli("backup", str(sandbox.root), "--host", "hv1", "--out", str(backup)).code == 0
    sandbox.domains()  # two hosts: a Domain would have to name its host
    write(sandbox.root, "hosts.yaml", host_yaml() + "---\n" + host_yaml("hv2", state="state/hv2.xml"))
    restored = cli("restore", str(sandbox.root), "--host", "hv2", "--from", str(backup))
    assert restored.code == 0, restored.out
    elsewhere = SecondHost(sandbox.root).view()
    assert {name: (v.active, v.autostart) for name, v in elsewhere.items()} == {
        "up": (True, True),
        "down": (False, True),
        "plain": (False, False),
    }


def test_force_replaces_only_the_files_it_writes(sandbox, tmp_path):
    sandbox.seed(plain("legacy"))
    sandbox.seed(plain("other"))
    sandbox.domains()
    out = sandbox.root / "imported"
    out.mkdir()
    (out / "README.md").write_text("hand-written\n")
    (out / "web.yaml").write_text("# another domain's manifest\n")
    first = cli("import", str(sandbox.root), "--host", "hv1", "--out", str(out), "legacy", "--force")
    assert first.code == 0, first.out + first.err
    (out / "legacy.yaml").write_text("# stale\n")
    again = cli("import", str(sandbox.root), "--host", "hv1", "--out", str(out), "legacy", "--force")
    assert again.code == 0, again.out + again.err
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "legacy.yaml", "web.yaml"]
    assert (out / "README.md").read_text() == "hand-written\n"
    assert (out / "web.yaml").read_text() == "# another domain's manifest\n"
    assert yaml.safe_load((out / "legacy.yaml").read_text())["metadata"]["name"] == "legacy"

    backup = tmp_path / "backup"
    assert cli("backup", str(sandbox.root), "--host", "hv1", "--out", str(backup)).code == 0
    (backup / "NOTES").write_text("kept\n")
    (backup / "legacy" / "mine.txt").write_text("kept too\n")
    (backup / "legacy" / "domain.xml").write_text("<domain><name>legacy</name></domain>")
    forced = cli("backup", str(sandbox.root), "--host", "hv1", "--out", str(backup), "legacy", "--force")
    assert forced.code == 0, forced.out + forced.err
    assert (backup / "NOTES").read_text() == "kept\n"
    assert (backup / "legacy" / "mine.txt").read_text() == "kept too\n"
    assert "<uuid>" in (backup / "legacy" / "domain.xml").read_text(), "replaced by the new backup"
    assert (backup / "other" / "domain.xml").exists(), "the other domain's backup is left alone"
    assert not [p for p in backup.iterdir() if p.name.startswith(".")], "no staging left behind"


def test_a_failed_backup_leaves_the_folder_as_it_was(sandbox, tmp_path):
    images = []
    for name in ("a", "b"):
        images.append(tmp_path / f"{name}.img")
        images[-1].write_bytes(name.encode() * 4096)
        sandbox.seed(plain(name, str(images[-1])), running=False)
    sandbox.domains()
    out = tmp_path / "backup"
    assert cli("backup", str(sandbox.root), "--host", "hv1", "--out", str(out), "--with-images").code == 0
    (out / "NOTES").write_text("kept\n")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for image in images:
        image.write_bytes(b"new content")

    def progress(path: str, _size: int, _number: int):
        if path == str(images[1]):
            raise OSError("disk full")  # the second domain's copy fails
        return lambda _done: None

    host = load_manifests(sandbox.root).hosts["hv1"]
    request = BackupRequest(host="hv1", out=out, names=[], local=True, with_images=True, force=True)
    with libvirt_host.connect(host, write=False) as hypervisor, pytest.raises(OSError):
        backup_domains(hypervisor, request, progress)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before, "nothing replaced"
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no staging left behind"


def test_an_image_copy_is_on_disk_before_its_sha256_is_recorded(sandbox, tmp_path, monkeypatch):
    image = tmp_path / "disk.img"
    image.write_bytes(b"boot" + bytes(2 * 1024 * 1024) + b"data")
    sandbox.seed(plain("keep", str(image)), running=False)
    sandbox.domains()
    flushed: list[tuple[int, str]] = []  # inode and path of what each fsync flushed, in order
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        flushed.append((os.fstat(fd).st_ino, os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    out = tmp_path / "backup"
    host = load_manifests(sandbox.root).hosts["hv1"]
    request = BackupRequest(host="hv1", out=out, names=["keep"], local=True, with_images=True)
    with libvirt_host.connect(host, write=False) as hypervisor:
        backup_domains(hypervisor, request)
    record = out / "keep" / "images.json"
    copy = out / "keep" / json.loads(record.read_text())["images"][0]["copy"]
    inodes = [inode for inode, _ in flushed]
    copy_flushed = inodes.index(copy.stat().st_ino)  # ValueError: the copy was never flushed
    # the staged folder that held the copy then (it is published into ``out`` afterwards)
    assert flushed[copy_flushed + 1][1].endswith("/keep/images"), "nor the folder entry naming it"
    assert copy_flushed < inodes.index(record.stat().st_ino), "flushed before the record of its sha256"


def test_import_marks_domains_pending_for_the_host_entry(sandbox, capsys):
    sandbox.seed(plain("legacy"))
    sandbox.seed(plain("later"))
    sandbox.domains()
    start = datetime.now(UTC).replace(microsecond=0)  # the mark is written in whole seconds
    out = sandbox.root / "imported"
    assert cli("import", str(sandbox.root), "--host", "hv1", "--out", str(out), "legacy").code == 0
    timed = cli(
        "import", str(sandbox.root), "--host", "hv1", "--out", str(out), "later", "--expire", "24h", "--force"
    )
    assert timed.code == 0, timed.out + timed.err
    ns = {"vr": "https://virt-reconcile.dev/xmlns/owner/v1"}
    marks = {
        name: etree.fromstring(view.xml.encode()).find("metadata/vr:owner", ns).attrib
        for name, view in sandbox.view().items()
    }
    assert (marks["legacy"]["host"], marks["legacy"]["pending"]) == ("hv1", "true")
    assert marks["legacy"]["root"], "the manifest root that imported it"
    assert "pendingUntil" not in marks["legacy"], "pending until first applied"
    assert (marks["later"]["host"], marks["later"]["pending"]) == ("hv1", "true")
    until = datetime.fromisoformat(marks["later"]["pendingUntil"])
    assert until.utcoffset() == timedelta(0)
    assert start + timedelta(hours=24) <= until <= datetime.now(UTC) + timedelta(hours=24, seconds=1)
    sandbox.seed(plain("third"))
    with pytest.raises(SystemExit) as usage:  # argparse's usage error, before anything is done
        main(["import", str(sandbox.root), "--host", "hv1", "--out", str(out), "third", "--expire", "1 day"])
    assert usage.value.code == 2 and "argument --expire: '1 day' is not a duration" in capsys.readouterr().err
    assert "vr:owner" not in sandbox.view()["third"].xml
