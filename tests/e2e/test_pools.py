"""Pools on a real libvirtd: a dir pool under /var/lib/libvirt/images defined, built, started and
autostarted by apply; files copied in by hand seen; a pool elsewhere under the same name refused as
a conflict; a plan over ``storage.commit`` refused; a logical pool whose device holds data never
formatted.

This machine has no LVM tools, so a logical pool cannot be built here: its whole path is covered on
the test driver (tests/sandbox/test_pools.py), and here only libvirt's refusal to build over a
device holding data (an ext4 image under /dev/shm, made by the test) is exercised for real.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
import yaml

from reconciler.adapters.libvirt.host import connect
from reconciler.adapters.libvirt.storage import _read_on_readers
from reconciler.engine.hypervisor import PoolObservation
from reconciler.libvirtxml.pools import read_volume_xml
from reconciler.spec.hosturi import HostURI
from reconciler.spec.manifests import load_manifests
from tests.e2e.conftest import URI
from tests.helpers import write

IMAGES = Path("/var/lib/libvirt/images")


class Pools:
    """Pool manifests for one test, every pool and folder of its prefix removed at the end."""

    def __init__(self, e2e) -> None:
        self.e2e = e2e
        self.folders: list[Path] = []

    def folder(self, short: str) -> Path:
        """A folder of this test under /var/lib/libvirt/images (QEMU can reach it), not made yet."""
        path = IMAGES / f"{self.e2e.name(short)}" / "volumes"
        self.folders.append(path.parent)
        return path

    def manifests(self, *pools: dict, domains: dict | None = None) -> None:
        """The Host, the given domains, and one Pool document per ``{name, **spec}``."""
        self.e2e.manifests(**(domains or {}))
        docs = [
            {
                "apiVersion": "virt-reconcile/v1",
                "kind": "Pool",
                "metadata": {"name": self.e2e.name(pool.pop("name"))},
                "spec": pool,
            }
            for pool in (dict(p) for p in pools)
        ]
        write(self.e2e.root, "pools.yaml", yaml.safe_dump_all(docs, sort_keys=False))

    def observed(self) -> dict[str, PoolObservation]:
        """This test's pools as the adapter observes them."""
        manifests = load_manifests(self.e2e.root)
        with connect(manifests.hosts["local"], write=False) as host:
            return {p.name: p for p in host.observe().pools if p.name.startswith(self.e2e.prefix)}

    def cleanup(self) -> None:
        conn = self.e2e.conn
        for pool in conn.listAllStoragePools(0):
            if not pool.name().startswith(self.e2e.prefix):
                continue
            with contextlib.suppress(libvirt.libvirtError):
                if pool.isActive():
                    for volume in pool.listAllVolumes(0):
                        volume.delete(0)
                    pool.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                pool.undefine()
        for folder in self.folders:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pools(e2e) -> Iterator[Pools]:
    found = Pools(e2e)
    try:
        yield found
    finally:
        e2e.cleanup()  # domains first: a volume may be their disk
        found.cleanup()


def test_a_dir_pool_is_defined_built_started_and_autostarted(e2e, pools):
    folder = pools.folder("images")
    pools.manifests({"name": "images", "type": "dir", "path": str(folder)})
    name = e2e.name("images")
    planned = e2e.cli("plan")
    assert planned.code == 2 and f"+ pool {name}" in planned.out, planned.out + planned.err
    applied = e2e.cli("apply")
    assert applied.code == 0, applied.out + applied.err
    assert "defined, built, started, autostart on" in applied.out  # its folder was missing: built
    assert folder.is_dir()
    pool = e2e.conn.storagePoolLookupByName(name)
    assert pool.isActive() and pool.autostart() and pool.isPersistent()
    again = e2e.cli("plan")
    assert again.code == 0 and "No changes" in again.out, again.out
    assert f"storage.commit[{name}] 0B/" in again.out

    # A base image copied in by hand shows up (the pool is refreshed before it is read).
    made = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(folder / "base.qcow2"), "1G"], check=False
    )
    assert made.returncode == 0
    for index in range(3):
        overlay = ["-F", "qcow2", "-b", str(folder / "base.qcow2"), str(folder / f"o{index}.qcow2"), "2G"]
        assert (
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *overlay], check=False).returncode == 0
        )
    volumes = {v.name: v for v in pools.observed()[name].volumes}
    assert (volumes["base.qcow2"].format, volumes["base.qcow2"].capacity) == ("qcow2", 1024**3)
    assert (volumes["o2.qcow2"].backing, volumes["o2.qcow2"].capacity) == (
        str(folder / "base.qcow2"),
        2 * 1024**3,
    )

    # Read over reader connections (as for a remote host with many volumes): the same volumes.
    wanted = [(name, volume) for volume in sorted(volumes)]
    read = _read_on_readers("local", (HostURI(URI), None), wanted, 2)
    assert [read_volume_xml(read[key] or "").name for key in wanted] == sorted(volumes)

    # An inactive pool is started again, and nothing else of it touched.
    pool.destroy()
    restarted = e2e.cli("apply")
    assert restarted.code == 0 and "started" in restarted.out and "defined" not in restarted.out
    assert pool.isActive()

    # The same name elsewhere: a conflict, nothing applied.
    pools.manifests({"name": "images", "type": "dir", "path": str(folder.parent / "other")})
    conflict = e2e.cli("apply")
    assert conflict.code == 1
    assert f"pool '{name}' exists as a dir pool at {folder}" in conflict.out
    assert not (folder.parent / "other").exists()


def test_a_plan_that_breaks_storage_commit_is_refused_and_creates_nothing(e2e, pools):
    folder = pools.folder("small")
    spec = {"name": "small", "type": "dir", "path": str(folder), "overcommit": {"ratio": 0.001}}
    pools.manifests(spec)
    assert e2e.cli("apply").code == 0
    name = e2e.name("small")
    seen = pools.observed()[name]
    limit = int(seen.capacity * 0.001)
    size = f"{limit // 1024**2 + 64}MiB"  # just over the pool's capacity × 0.001
    disk = {"volume": {"pool": name, "name": "web.qcow2", "size": size}}
    pools.manifests(spec, domains={"web": e2e.guest(state="stopped", disks=[disk])})
    planned = e2e.cli("plan")
    assert planned.code == 3, planned.out + planned.err
    assert f"✗ refused by policy: storage.commit[{name}]: 0B → {size} > " in planned.out
    assert f"(adding most: {e2e.name('web')} +{size})" in planned.out
    assert e2e.cli("apply").code == 3
    assert not (folder / "web.qcow2").exists() and not e2e.exists("web")


def test_a_logical_pool_whose_device_holds_data_is_never_formatted(e2e, pools, tmp_path):
    device = Path("/dev/shm") / f"{e2e.prefix}pv.img"
    try:
        with device.open("wb") as image:
            image.truncate(16 * 1024**2)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(device)], check=True)
        before = device.read_bytes()
        group = e2e.prefix.replace("-", "")
        pools.manifests({"name": "vg", "type": "logical", "path": f"/dev/{group}", "devices": [str(device)]})
        applied = e2e.cli("apply")
        assert applied.code == 1, applied.out + applied.err
        assert "building it failed" in applied.out and "never formatted" in applied.out
        assert "forced overwrite is necessary" in applied.out
        assert device.read_bytes() == before  # not a byte changed
        pool = e2e.conn.storagePoolLookupByName(e2e.name("vg"))
        assert not pool.isActive()  # defined (a pool is never undefined by virt-reconcile), not built
        again = e2e.cli("apply")  # tried again, refused again: never retried with overwrite
        assert again.code == 1 and device.read_bytes() == before
    finally:
        device.unlink(missing_ok=True)


def test_a_new_pool_is_judged_on_its_filesystem_and_pools_sharing_one_share_its_limits(e2e, pools):
    first, second = pools.folder("first"), pools.folder("second")
    a, b = e2e.name("first"), e2e.name("second")
    tight = {"name": "first", "type": "dir", "path": str(first), "overcommit": {"ratio": 0.001}}
    other = {"name": "second", "type": "dir", "path": str(second)}
    figures = os.statvfs(IMAGES)  # where both folders will be: the filesystem libvirt will count
    size = f"{figures.f_frsize * figures.f_blocks // 1000 // 1024**2 + 64}MiB"  # over capacity × 0.001
    disk = {"volume": {"pool": a, "name": "web.qcow2", "size": size}}
    pools.manifests(tight, other, domains={"web": e2e.guest(state="stopped", disks=[disk])})
    planned = e2e.cli("plan")
    assert planned.code == 3, planned.out + planned.err  # judged in the plan, though neither pool runs
    assert f"✗ refused by policy: storage.commit[{a}]: 0B → {size} > " in planned.out
    assert f"capacity of the filesystem holding {first} (estimated: the pool does not run yet)" in planned.out
    assert e2e.cli("apply").code == 3 and not first.exists()

    one = {"volume": {"pool": a, "name": "x.qcow2", "size": "1GiB"}}
    two = {"volume": {"pool": b, "name": "y.qcow2", "size": "1GiB"}}
    x, y = (e2e.guest(state="stopped", disks=[d]) for d in (one, two))
    pools.manifests({**tight, "overcommit": {"ratio": 1}}, other, domains={"x": x, "y": y})
    applied = e2e.cli("apply")
    assert applied.code == 0, applied.out + applied.err
    seen = pools.observed()
    assert seen[a].filesystem == seen[b].filesystem == f"dev {os.stat(IMAGES).st_dev}"
    document = json.loads(e2e.cli("plan", "--format", "json").out)["hosts"]["local"]["policy"]
    commit, free = document[f"storage.commit[{a}]"], document[f"storage.free[{b}]"]
    assert commit["after"] == 2 * 1024**3, "one filesystem: each pool counts the volumes of both"
    assert f"free on the filesystem pools {a}, {b} share" in free["arithmetic"]
