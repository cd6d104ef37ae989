"""cloud-init seeds and consoles on the real libvirtd with QEMU.

A dir pool under a folder QEMU can read (made by the test's Pool manifest); the seed built in Python,
uploaded through libvirt's upload stream and read back from the pool's file with pycdlib (and
``qemu-img info``); attached to the running TCG guest as a read-only cdrom; a changed user-data is a
reseed only (the guest keeps running, nothing redefined). A VNC console with a password from a
file on this machine listens on 127.0.0.1 (the RFB banner is read from it), its password is in the
live definition read securely, and in no plan, snapshot or command output.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
import yaml
from lxml import etree

from reconciler.adapters.libvirt.host import LibvirtHypervisor
from reconciler.engine.actions import VolumeChange
from reconciler.engine.seediso import build_seed_iso, read_seed_iso
from reconciler.engine.seeds import SEED_VOLUME_BYTES
from reconciler.errors import PermanentHostError
from reconciler.spec.cloudinit import Seed, generated_meta_data
from tests.e2e.conftest import E2E, URI
from tests.helpers import write

SECRET = "e2e-cloud-secret-93c1"
PASSWORD = "e2eVnc7x"


@pytest.fixture
def seed_pool(e2e: E2E) -> Iterator[tuple[str, Path]]:
    """A pool name and a folder for it under /var/lib/libvirt/images; the pool (made by the test's
    Pool manifest) and the folder are removed at the end, whatever happened."""
    name = e2e.name("seeds")
    folder = Path("/var/lib/libvirt/images") / name
    try:
        yield name, folder
    finally:
        e2e.cleanup()  # domains first: the seed is attached to one
        with contextlib.suppress(libvirt.libvirtError):
            made = e2e.conn.storagePoolLookupByName(name)
            with contextlib.suppress(libvirt.libvirtError):
                made.destroy()
            made.undefine()
        shutil.rmtree(folder, ignore_errors=True)


def manifests(e2e: E2E, pool: str, folder: Path, password_file: Path) -> None:
    spec = e2e.guest(
        cloudInit={
            "userData": {"file": "cloud/user-data.yaml"},
            "networkConfig": {"file": "cloud/network-config"},
            "pool": pool,
        },
        graphics={"type": "vnc", "passwordFile": str(password_file)},
        serial=True,
    )
    docs = [
        {
            "apiVersion": "virt-reconcile/v1",
            "kind": "Host",
            "metadata": {"name": "local"},
            "spec": {"uri": URI},
        },
        {
            "apiVersion": "virt-reconcile/v1",
            "kind": "Pool",
            "metadata": {"name": pool},
            "spec": {"type": "dir", "path": str(folder)},
        },
        {
            "apiVersion": "virt-reconcile/v1",
            "kind": "Domain",
            "metadata": {"name": e2e.name("web")},
            "spec": spec,
        },
    ]
    write(e2e.root, "manifests.yaml", yaml.safe_dump_all(docs, sort_keys=False))


def user_data(password: str) -> bytes:
    users = f"[{{name: root, password: {password}}}]"
    return f"#cloud-config\nchpasswd: {{expire: false, users: {users}}}\n".encode()


def seed_files(path: Path) -> tuple[str, dict[str, bytes]]:
    """The label and files of the seed volume, read from its file in the pool."""
    return read_seed_iso(path.read_bytes())


def vnc_banner(port: int) -> bytes:
    """The first bytes a VNC server sends (``RFB 003.008``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        return client.recv(12)


def test_a_seed_is_uploaded_attached_and_reseeded_and_vnc_listens_with_its_password(e2e, seed_pool, tmp_path):
    pool, folder = seed_pool
    password_file = tmp_path / "web.vnc"
    password_file.write_text(PASSWORD + "\n")
    write(e2e.root, "cloud/user-data.yaml", user_data(SECRET).decode())
    write(e2e.root, "cloud/network-config", "version: 2\nethernets: {eth0: {dhcp4: true}}\n")
    manifests(e2e, pool, folder, password_file)
    outputs = []

    applied = e2e.cli("apply")
    assert applied.code == 0, applied.out + applied.err
    outputs.append(applied.out + applied.err)
    volume = folder / f"{e2e.name('web')}-cidata.iso"
    label, files = seed_files(volume)
    assert label == "cidata"
    assert files == {
        "user-data": user_data(SECRET),
        "meta-data": generated_meta_data(e2e.name("web")),
        "network-config": b"version: 2\nethernets: {eth0: {dhcp4: true}}\n",
    }
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(volume)], check=True, capture_output=True
        ).stdout
    )
    assert info["format"] == "raw" and info["virtual-size"] == volume.stat().st_size

    dom = e2e.domain("web")
    assert dom.isActive()
    live = etree.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE).encode())
    [cdrom] = [d for d in live.iterfind("devices/disk") if d.get("device") == "cdrom"]
    source = cdrom.find("source")
    assert (source.get("pool"), source.get("volume")) == (pool, volume.name)
    assert cdrom.find("readonly") is not None
    graphics = live.find("devices/graphics")
    assert (graphics.get("type"), graphics.get("listen"), graphics.get("passwd")) == (
        "vnc",
        "127.0.0.1",
        PASSWORD,
    )
    port = int(graphics.get("port"))
    assert port >= 5900 and vnc_banner(port).startswith(b"RFB ")
    assert "passwd" not in dom.XMLDesc(0), "a read without the secure flag never shows it"
    assert live.find("devices/serial").get("type") == "pty"

    assert e2e.cli("plan").code == 0, "applied: nothing left to do"
    instance = dom.ID()
    write(e2e.root, "cloud/user-data.yaml", user_data(SECRET + "-rotated").decode())
    planned = e2e.cli("plan", "--format", "json")
    assert planned.code == 2, planned.out + planned.err
    outputs.append(planned.out)
    [action] = json.loads(planned.out)["actions"]
    assert (action["action"], action["restart"]) == ("reseed", False)
    reseeded = e2e.cli("apply")
    assert reseeded.code == 0, reseeded.out + reseeded.err
    outputs.append(reseeded.out)
    assert seed_files(volume)[1]["user-data"] == user_data(SECRET + "-rotated")
    assert dom.isActive() and dom.ID() == instance, "a reseed restarts nothing"
    assert e2e.cli("plan").code == 0

    snapshot = tmp_path / "snapshot.json"
    taken = e2e.cli("snapshot", "--out", str(snapshot))
    assert taken.code == 0, taken.out + taken.err
    outputs += [snapshot.read_text(), e2e.cli("plan", "--format", "json").out]
    assert not [text for text in outputs if SECRET in text or PASSWORD in text]


def test_a_seed_never_overwrites_a_disk_of_its_name_in_the_plan_or_in_the_adapter(e2e, seed_pool):
    """The reproduced loss on a real pool: x11's data disk is named x12-cidata.iso; when x12 gets
    cloudInit the plan refuses, and the adapter, asked directly (as a plan that missed it would), reads
    the volume's head and refuses to write anything but a seed: x11's bytes stay."""
    pool, folder = seed_pool
    x11, x12 = e2e.name("x11"), e2e.name("x12")
    stopped = {"state": "stopped"}

    def docs(*domains: tuple[str, dict]) -> None:
        host = {
            "apiVersion": "virt-reconcile/v1",
            "kind": "Host",
            "metadata": {"name": "local"},
            "spec": {"uri": URI},
        }
        made = {
            "apiVersion": "virt-reconcile/v1",
            "kind": "Pool",
            "metadata": {"name": pool},
            "spec": {"type": "dir", "path": str(folder)},
        }
        listed = [
            {"apiVersion": "virt-reconcile/v1", "kind": "Domain", "metadata": {"name": name}, "spec": spec}
            for name, spec in domains
        ]
        write(e2e.root, "manifests.yaml", yaml.safe_dump_all([host, made, *listed], sort_keys=False))

    def disk(name: str) -> dict:
        return {"volume": {"pool": pool, "name": name, "size": "1MiB"}, "format": "raw"}

    docs(
        (x11, e2e.guest(disks=[disk(f"{x12}-cidata.iso")], **stopped)),
        (x12, e2e.guest(disks=[disk(f"{x12}-root")], **stopped)),
    )
    applied = e2e.cli("apply")
    assert applied.code == 0, applied.out + applied.err
    data = folder / f"{x12}-cidata.iso"
    data.write_bytes((b"x11's data, not a seed\n" * 50_000)[: 1024**2])  # a filesystem, a database...
    before = data.read_bytes()

    write(e2e.root, "cloud/user-data.yaml", user_data(SECRET).decode())
    seeded = e2e.guest(
        disks=[disk(f"{x12}-root")], cloudInit={"userData": {"file": "cloud/user-data.yaml"}}, **stopped
    )
    docs((x12, seeded))  # x11 gone from git: kept as an orphan (no prune), its disk still its own
    refused = e2e.cli("apply")
    assert refused.code == 1, refused.out + refused.err
    assert f"volume {pool}/{x12}-cidata.iso is a disk of domain {x11!r}" in refused.out
    assert data.read_bytes() == before

    image = build_seed_iso(Seed.of(x12, pool, {"user-data": user_data(SECRET)}))
    hypervisor = LibvirtHypervisor("local", e2e.conn)
    change = VolumeChange(pool, f"{x12}-cidata.iso", SEED_VOLUME_BYTES, previous=len(before), format="raw")
    with pytest.raises(PermanentHostError, match="holds something other than a cloud-init seed"):
        hypervisor.upload_volume(change, image)
    assert data.read_bytes() == before
