"""Volumes on domain disks through the CLI on a sandbox host (libvirt's test driver has storage
pools too): created before the define, grown, a shrink refused, deleted with a pruned domain only
when its disk says so, a crash between the volume and the define recovered, saved plans re-checked."""

from __future__ import annotations

import json
from pathlib import Path

import libvirt
import pytest
import yaml

from reconciler.adapters.sandbox import new_node_xml
from reconciler.engine.reconcile import ReconcileOptions, reconcile
from reconciler.spec.manifests import load_manifests
from tests.helpers import cli, write
from tests.sandbox.test_recovery import Crash, crashing_connector

GiB = 1024**3
BASE = "/srv/base/debian-12.qcow2"
#: A sandbox whose "base" pool already holds a 2 GiB base image (the test driver's node format).
SEEDED = new_node_xml(16, 64 * GiB).replace(
    "</node>",
    "  <pool type='dir'><name>base</name><target><path>/srv/base</path></target>\n"
    "    <volume><name>debian-12.qcow2</name><capacity unit='bytes'>2147483648</capacity>"
    "<allocation unit='bytes'>314572800</allocation><target><format type='qcow2'/></target></volume>\n"
    "  </pool>\n</node>",
)


def manifests(root: Path, *, prune: bool = False, **domains: list[dict]) -> None:
    """A sandbox host with an ``images`` pool (and the seeded ``base`` pool), one domain per name."""
    docs: list[dict] = [
        {
            "apiVersion": "virt-reconcile/v1",
            "kind": "Host",
            "metadata": {"name": "hv1"},
            "spec": {"uri": "sandbox:state/hv1.xml", "prune": prune},
        },
        pool("images", "/var/lib/libvirt/images"),
        pool("base", "/srv/base"),
    ]
    for name, disks in domains.items():
        spec = {"memory": "1GiB", "disks": disks}
        docs.append(
            {"apiVersion": "virt-reconcile/v1", "kind": "Domain", "metadata": {"name": name}, "spec": spec}
        )
    write(root, "manifests.yaml", yaml.safe_dump_all(docs, sort_keys=False))


def pool(name: str, path: str) -> dict:
    return {
        "apiVersion": "virt-reconcile/v1",
        "kind": "Pool",
        "metadata": {"name": name},
        "spec": {"type": "dir", "path": path},
    }


def overlay(name: str, size: str = "20GiB", **disk: object) -> dict:
    return {"volume": {"pool": "images", "name": name, "size": size, "from": {"path": BASE}}, **disk}


def volumes(root: Path) -> dict[str, tuple[int, str]]:
    """Each volume of the sandbox's ``images`` pool: (capacity, backing file)."""
    conn = libvirt.open(f"test://{root / 'state' / 'hv1.xml'}")
    try:
        found = {}
        for volume in conn.storagePoolLookupByName("images").listAllVolumes():
            xml = volume.XMLDesc()
            backing = (
                xml.split("<backingStore>")[1].split("</path>")[0].split("<path>")[1]
                if "<backingStore>" in xml
                else ""
            )
            found[volume.name()] = (volume.info()[1], backing)
        return found
    finally:
        conn.close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write(tmp_path, "state/hv1.xml", SEEDED)
    return tmp_path


def test_apply_makes_the_overlay_before_the_domain_and_then_plans_nothing(root):
    manifests(root, web=[overlay("web-root")])
    planned = cli("plan", str(root))
    assert planned.code == 2, planned.out + planned.err
    assert "+ create-volume web" in planned.out
    assert "volume images/web-root: 20GiB, qcow2 overlay on /srv/base/debian-12.qcow2" in planned.out
    applied = cli("apply", str(root))
    assert applied.code == 0, applied.out + applied.err
    order = [
        line.split()[1]
        for line in applied.out.splitlines()
        if line.startswith("  ") and ": " in line and "(" in line
    ]
    assert order.index("create-volume") < order.index("define")
    assert volumes(root) == {"web-root": (20 * GiB, BASE)}
    again = cli("plan", str(root))
    assert again.code == 0 and "No changes" in again.out, again.out


def test_the_json_plan_gives_each_volume_action_its_sizes_in_bytes(root):
    manifests(root, web=[overlay("web-root", size="4GiB", deleteVolumes=True)])
    document = json.loads(cli("plan", "--format", "json", str(root)).out)
    create = next(a for a in document["actions"] if a["action"] == "create-volume")
    assert create["volume"] == {
        "pool": "images",
        "name": "web-root",
        "capacity": 4 * GiB,
        "previous": 0,
        "allocation": 0,
        "source": BASE,
        "mode": "backing",
        "format": "qcow2",
    }
    assert create["changes"] == [{"field": "disks[vda].volume.size", "before": None, "after": "4GiB"}]
    assert document["hosts"]["hv1"]["domains"]["web"]["sync"] == "outOfSync"


def test_a_volume_grows_and_never_shrinks(root):
    manifests(root, web=[overlay("web-root")])
    assert cli("apply", str(root)).code == 0
    manifests(root, web=[overlay("web-root", size="30GiB")])
    grown = cli("apply", str(root))
    assert grown.code == 0, grown.out + grown.err
    assert "resize-volume web: grown live to 30GiB" in grown.out
    assert volumes(root)["web-root"][0] == 30 * GiB
    manifests(
        root,
        web=[
            overlay("web-root", size="10GiB"),
            {"path": "/var/lib/libvirt/images/data.raw", "format": "raw"},
        ],
    )
    refused = cli("apply", str(root))
    assert refused.code == 1
    assert "shrinking images/web-root 30GiB → 10GiB would destroy data; volumes only grow" in refused.out
    assert volumes(root)["web-root"][0] == 30 * GiB
    assert "data.raw" not in (root / "state" / "hv1.xml").read_text(), "nothing is applied on a refused host"


def test_a_pruned_domain_keeps_its_volumes_unless_its_disk_says_delete_volumes(root):
    manifests(
        root,
        kept=[overlay("kept-root")],
        gone=[overlay("gone-root", deleteVolumes=True)],
        stays=[overlay("stays-root")],
    )
    assert cli("apply", str(root)).code == 0
    manifests(root, prune=True, stays=[overlay("stays-root")])
    pruned = cli("apply", "--allow-mass-delete", str(root))
    assert pruned.code == 0, pruned.out + pruned.err
    assert "delete-volume gone: deleted" in pruned.out
    assert set(volumes(root)) == {"kept-root", "stays-root"}


def test_a_crash_between_the_volume_and_the_define_is_finished_by_the_next_apply(root):
    manifests(root, web=[overlay("web-root")])
    planned = json.loads(cli("plan", "--format", "json", str(root)).out)["actions"]
    first = [a["action"] for a in planned].index("create-volume") + 1  # the pools, then the volume
    with pytest.raises(Crash):  # the process dies right after making the volume
        reconcile(load_manifests(root), crashing_connector(first), ReconcileOptions(apply=True))
    assert volumes(root) == {"web-root": (20 * GiB, BASE)}
    planned = cli("plan", str(root))
    assert "create-volume" not in planned.out and "+ define web" in planned.out, planned.out
    assert cli("apply", str(root)).code == 0
    assert cli("plan", str(root)).code == 0


def test_a_saved_plan_with_volume_actions_is_rechecked_and_applied(root, tmp_path):
    manifests(root)
    assert cli("apply", str(root)).code == 0  # the pools first: this plan holds volume actions only
    manifests(root, web=[overlay("web-root")])
    saved = tmp_path / "plan.json"
    assert cli("plan", str(root), "--out", str(saved)).code == 2
    document = json.loads(saved.read_text())
    assert [a["volume"]["name"] for a in document["hosts"]["hv1"]["actions"] if a["volume"]] == ["web-root"]
    applied = cli("apply", "--plan", str(saved))
    assert applied.code == 0, applied.out + applied.err
    assert volumes(root) == {"web-root": (20 * GiB, BASE)}
    stale = cli("apply", "--plan", str(saved))
    assert stale.code == 1  # the host moved on: the plan is stale, nothing runs twice


def test_import_gives_a_volume_disk_its_size_from_the_pool_and_backup_its_path(root, tmp_path):
    legacy = (
        "<domain type='kvm'><name>legacy</name><memory unit='MiB'>512</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64'>hvm</type></os><devices><disk type='volume' device='disk'>"
        "<driver name='qemu' type='qcow2'/><source pool='images' volume='legacy-root'/>"
        "<target dev='vda' bus='virtio'/></disk></devices></domain>"
    )
    images = (
        "<pool type='dir'><name>images</name><target><path>/var/lib/libvirt/images</path></target>"
        "<volume><name>legacy-root</name><capacity unit='bytes'>8589934592</capacity>"
        "<target><format type='qcow2'/></target></volume></pool>"
    )
    write(root, "state/hv1.xml", SEEDED.replace("</node>", f"{images}\n{legacy}\n</node>"))
    manifests(root)
    imported = cli("import", str(root), "--host", "hv1", "--out", str(tmp_path / "imported"))
    assert imported.code == 0, imported.out + imported.err
    document = yaml.safe_load((tmp_path / "imported" / "legacy.yaml").read_text())
    assert document["spec"]["disks"][0]["volume"] == {
        "pool": "images",
        "name": "legacy-root",
        "size": "8GiB",
        "from": None,
    }
    backup = tmp_path / "backup"
    assert cli("backup", str(root), "--host", "hv1", "--out", str(backup), "legacy").code == 0
    images_json = json.loads((backup / "legacy" / "images.json").read_text())
    assert [image["path"] for image in images_json["images"]] == ["/var/lib/libvirt/images/legacy-root"]


def test_a_snapshot_of_a_host_with_volumes_plans_like_the_host(root, tmp_path):
    manifests(root, web=[overlay("web-root")])
    assert cli("apply", str(root)).code == 0
    manifests(root, web=[overlay("web-root", size="30GiB")])
    snapshot = tmp_path / "hv1.json"
    assert cli("snapshot", str(root), "--out", str(snapshot)).code == 0
    from_snapshot = cli("plan", str(root), "--state", str(snapshot))
    live = cli("plan", str(root))
    assert from_snapshot.code == live.code == 2, from_snapshot.out + from_snapshot.err
    assert "volume images/web-root: 20GiB → 30GiB" in from_snapshot.out
