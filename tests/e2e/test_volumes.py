"""Volumes on the real libvirtd with QEMU: a dir pool under a folder QEMU can read, a small base image
made with ``qemu-img``, and the e2e guest booted on a qcow2 overlay of it. The guest prints the size
of /dev/vda on its serial console (scripts/build-guest.sh), so a live grow is seen from inside; a
shrink is refused; an undefined domain's volume stays unless its disk says ``deleteVolumes: true``."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
import yaml

from tests.e2e.conftest import E2E, GUEST, URI
from tests.helpers import write

MiB = 1024**2
#: The guest that prints its disk sizes (scripts/build-guest.sh writes its version beside it).
GUEST_VERSION = "2"


@pytest.fixture
def pool(e2e: E2E) -> Iterator[tuple[str, Path]]:
    """A folder QEMU can enter, with a 64 MiB qcow2 base image; the pool over it (made by the test's
    Pool manifest), its volumes and the folder are removed at the end, whatever happened."""
    marker = GUEST / "guest-version"
    if not marker.exists() or marker.read_text().strip() != GUEST_VERSION:
        pytest.fail(
            f"the e2e guest in {GUEST} predates disk sizes on its console: run scripts/build-guest.sh"
        )
    name = e2e.name("pool")
    folder = Path("/var/lib/libvirt/images") / name
    folder.mkdir(mode=0o755)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(folder / "base.qcow2"), "64M"], check=True)
    try:
        yield name, folder
    finally:
        e2e.cleanup()  # domains first: a pool's volumes may be in use
        with contextlib.suppress(libvirt.libvirtError):
            made = e2e.conn.storagePoolLookupByName(name)
            with contextlib.suppress(libvirt.libvirtError):
                made.destroy()
            made.undefine()
        shutil.rmtree(folder, ignore_errors=True)


def manifests(e2e: E2E, pool: str, folder: Path, **domains: dict) -> None:
    """Host (prune on), the Pool over ``folder``, and one Domain per short name."""
    docs: list[dict] = [
        {
            "apiVersion": "virt-reconcile/v1",
            "kind": "Host",
            "metadata": {"name": "local"},
            "spec": {"uri": URI, "prune": True},
        },
        {
            "apiVersion": "virt-reconcile/v1",
            "kind": "Pool",
            "metadata": {"name": pool},
            "spec": {"type": "dir", "path": str(folder)},
        },
    ]
    docs += [
        {
            "apiVersion": "virt-reconcile/v1",
            "kind": "Domain",
            "metadata": {"name": e2e.name(short)},
            "spec": spec,
        }
        for short, spec in domains.items()
    ]
    write(e2e.root, "manifests.yaml", yaml.safe_dump_all(docs, sort_keys=False))


def volume_disk(pool: str, name: str, size: str, **extra: object) -> dict:
    return {"volume": {"pool": pool, "name": name, "size": size, **extra.pop("volume", {})}, **extra}


def image_info(path: Path) -> dict:
    """``qemu-img info`` of an image, read while QEMU may hold it (``-U``)."""
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(path)], check=True, capture_output=True
    )
    return json.loads(out.stdout)


def test_a_guest_boots_on_an_overlay_grows_live_and_never_shrinks(e2e, pool):
    name, folder = pool
    root, base = e2e.name("root.qcow2"), folder / "base.qcow2"
    disk = {"from": {"path": str(base), "mode": "backing"}}
    manifests(e2e, name, folder, web=e2e.guest(disks=[volume_disk(name, root, "128MiB", volume=disk)]))
    applied = e2e.cli("apply")
    assert applied.code == 0, applied.out + applied.err
    assert f"+ create-volume {e2e.name('web')}: created: qcow2 overlay on {base}, 128MiB" in applied.out
    info = image_info(folder / root)
    assert (info["format"], info["virtual-size"], info["backing-filename"]) == ("qcow2", 128 * MiB, str(base))
    assert e2e.console_shows("web", b"VR-DISK vda 262144"), "the guest sees its 128 MiB disk"

    manifests(e2e, name, folder, web=e2e.guest(disks=[volume_disk(name, root, "192MiB", volume=disk)]))
    grown = e2e.cli("apply")
    assert grown.code == 0, grown.out + grown.err
    assert "grown live to 192MiB (the running guest sees it)" in grown.out
    assert e2e.console_shows("web", b"VR-DISK vda 393216"), "the running guest sees the new size"
    assert image_info(folder / root)["virtual-size"] == 192 * MiB
    assert e2e.cli("plan").code == 0, "grown as the manifest says: nothing left to do"

    manifests(e2e, name, folder, web=e2e.guest(disks=[volume_disk(name, root, "64MiB", volume=disk)]))
    refused = e2e.cli("apply")
    assert refused.code == 1
    assert f"shrinking {name}/{root} 192MiB → 64MiB would destroy data; volumes only grow" in refused.out
    assert image_info(folder / root)["virtual-size"] == 192 * MiB


def test_a_clone_and_an_empty_volume_outlive_their_domain_unless_it_says_delete_volumes(e2e, pool):
    name, folder = pool
    kept, doomed = e2e.name("kept.qcow2"), e2e.name("doomed.raw")
    copy = {"from": {"path": str(folder / "base.qcow2"), "mode": "clone"}}  # a full copy, then grown
    manifests(
        e2e,
        name,
        folder,
        keeper=e2e.guest(state="stopped", disks=[volume_disk(name, kept, "96MiB", volume=copy)]),
        goner=e2e.guest(
            state="stopped", disks=[volume_disk(name, doomed, "16MiB", format="raw", deleteVolumes=True)]
        ),
    )
    assert e2e.cli("apply").code == 0
    clone = image_info(folder / kept)
    assert (clone["format"], clone["virtual-size"], clone.get("backing-filename")) == (
        "qcow2",
        96 * MiB,
        None,
    )
    assert image_info(folder / doomed)["format"] == "raw"
    manifests(e2e, name, folder)
    pruned = e2e.cli("apply", "--allow-mass-delete")
    assert pruned.code == 0, pruned.out + pruned.err
    assert f"- delete-volume {e2e.name('goner')}: deleted" in pruned.out
    assert not e2e.exists("keeper") and not e2e.exists("goner")
    assert (folder / kept).exists(), "a volume is kept when its domain is undefined"
    assert not (folder / doomed).exists(), "deleteVolumes: true deletes it after the undefine"


def test_a_pruned_domains_volume_that_backs_an_overlay_is_kept(e2e, pool):
    name, folder = pool
    root = e2e.name("root.qcow2")
    manifests(
        e2e,
        name,
        folder,
        vm08=e2e.guest(state="stopped", disks=[volume_disk(name, root, "64MiB", deleteVolumes=True)]),
    )
    assert e2e.cli("apply").code == 0
    overlay = folder / e2e.name("x13.qcow2")  # made by hand on vm08's root: libvirt reads its backing
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(folder / root), "-F", "qcow2", str(overlay)],
        check=True,
    )
    manifests(e2e, name, folder)
    pruned = e2e.cli("apply", "--allow-mass-delete")
    assert pruned.code == 0, pruned.out + pruned.err
    assert f"volume {name}/{root} kept: it is the backing file of volume {name}/{overlay.name}" in pruned.out
    assert "delete-volume" not in pruned.out
    assert not e2e.exists("vm08")
    assert image_info(overlay)["backing-filename"] == str(folder / root)
    assert (folder / root).exists(), "the base of an overlay outlives deleteVolumes: true"


def test_a_disk_format_other_than_its_volumes_image_is_refused(e2e, pool):
    name, folder = pool
    root = e2e.name("root.qcow2")
    disk = volume_disk(name, root, "64MiB")  # an empty qcow2 image
    manifests(e2e, name, folder, web=e2e.guest(state="stopped", disks=[disk]))
    assert e2e.cli("apply").code == 0
    manifests(e2e, name, folder, web=e2e.guest(state="stopped", disks=[{**disk, "format": "raw"}]))
    refused = e2e.cli("apply")
    assert refused.code == 1, refused.out + refused.err
    assert f"volume {name}/{root} is a qcow2 image and the disk says raw" in refused.out
    assert "type='qcow2'" in e2e.domain("web").XMLDesc(0), "the definition is left as it was"
    assert image_info(folder / root)["format"] == "qcow2"
