"""Pools on sandbox hosts (libvirt's test driver): defined, started and autostarted by apply, kept in
the state file across runs, adopted or refused as a conflict, and held to the storage rules."""

from __future__ import annotations

import json
from pathlib import Path

from reconciler.adapters.libvirt.host import connect
from reconciler.adapters.sandbox import SANDBOX_NS, new_node_xml
from reconciler.engine.hypervisor import PoolObservation
from reconciler.files.keys import signing_key
from reconciler.offline.savedplan import signature
from reconciler.spec.manifests import load_manifests
from tests.helpers import cli, host_yaml, write

GiB = 1024**3
TEST_DRIVER_POOL = 100 * GiB  # the test driver gives every pool this capacity


#: A dir pool ``images`` at /srv/images holding a 30 GiB volume (2 GiB allocated), marked not running.
INACTIVE_IMAGES = (
    "<pool type='dir'><name>images</name><target><path>/srv/images</path></target>\n"
    "  <volume type='file'><name>old.qcow2</name><capacity unit='GiB'>30</capacity>"
    "<allocation unit='GiB'>2</allocation><target><format type='qcow2'/></target></volume>\n</pool>\n"
    f"<sandbox:pool-inactive xmlns:sandbox='{SANDBOX_NS}' pool='images'/>\n"
)


def pool_yaml(name: str, **spec: object) -> str:
    import yaml

    return yaml.safe_dump(
        {"apiVersion": "virt-reconcile/v1", "kind": "Pool", "metadata": {"name": name}, "spec": spec},
        sort_keys=False,
    )


def observed_pools(root: Path) -> dict[str, PoolObservation]:
    manifests = load_manifests(root)
    with connect(manifests.hosts["hv1"], write=False) as host:
        return {pool.name: pool for pool in host.observe().pools}


def seed(root: Path, pools: str) -> None:
    """A state file holding ``pools`` (node XML) before the first run."""
    node = new_node_xml(8, 16 * GiB).replace("</node>", pools + "</node>")
    (root / "state").mkdir(exist_ok=True)
    (root / "state" / "hv1.xml").write_text(node)


def test_apply_defines_starts_and_autostarts_pools_and_the_file_keeps_them(tmp_path):
    images = tmp_path / "images"
    write(tmp_path, "hosts.yaml", host_yaml())
    write(
        tmp_path,
        "pools.yaml",
        pool_yaml("images", type="dir", path=str(images))
        + "---\n"
        + pool_yaml("vg0", type="logical", devices=["/dev/sdb"], autostart=False),
    )
    planned = cli("plan", str(tmp_path))
    assert planned.code == 2
    assert "+ pool images" in planned.out and "+ pool vg0" in planned.out
    assert (
        "storage.commit[images], storage.free[images]: not checked: the pool does not exist yet"
        in planned.out
    )
    applied = cli("apply", str(tmp_path))
    assert applied.code == 0, applied.out + applied.err
    assert "+ pool images" in applied.out and "defined, started, autostart on" in applied.out
    assert "defined, started" in applied.out
    pools = observed_pools(tmp_path)
    assert (pools["images"].type, pools["images"].target) == ("dir", str(images))
    assert pools["images"].active and pools["images"].autostart
    assert pools["vg0"].active and not pools["vg0"].autostart and pools["vg0"].target == "/dev/vg0"
    assert pools["images"].capacity == TEST_DRIVER_POOL
    again = cli("plan", str(tmp_path))
    assert again.code == 0 and "No changes" in again.out
    assert "storage.commit[images] 0B/100GiB" in again.out


def test_an_inactive_pool_of_the_same_type_and_place_is_adopted_and_started(tmp_path):
    seed(tmp_path, INACTIVE_IMAGES)
    write(tmp_path, "hosts.yaml", host_yaml())
    write(tmp_path, "pools.yaml", pool_yaml("images", type="dir", path="/srv/images"))
    assert not observed_pools(tmp_path)["images"].active  # the file's mark holds across loads
    planned = cli("plan", str(tmp_path), "--format", "json")
    [action] = json.loads(planned.out)["actions"]
    assert action["pool"] == "images" and action["changes"] == [
        {"field": "active", "before": False, "after": True},
        {"field": "autostart", "before": False, "after": True},
    ]
    assert cli("apply", str(tmp_path)).code == 0
    images = observed_pools(tmp_path)["images"]
    assert images.active and images.autostart
    [volume] = images.volumes  # its volume came back with it, from the state file
    assert (volume.name, volume.capacity, volume.allocation, volume.format) == (
        "old.qcow2",
        30 * GiB,
        2 * GiB,
        "qcow2",
    )
    assert cli("plan", str(tmp_path)).code == 0


def test_a_pool_elsewhere_under_the_same_name_is_a_conflict_and_nothing_is_applied(tmp_path):
    seed(tmp_path, "<pool type='dir'><name>images</name><target><path>/srv/other</path></target></pool>\n")
    before = (tmp_path / "state" / "hv1.xml").read_bytes()
    write(tmp_path, "hosts.yaml", host_yaml())
    write(
        tmp_path,
        "pools.yaml",
        pool_yaml("images", type="dir", path="/srv/images")
        + "---\n"
        + pool_yaml("new", type="dir", path="/n"),
    )
    planned = cli("plan", str(tmp_path))
    assert planned.code == 1
    assert (
        "pool 'images' exists as a dir pool at /srv/other, the manifest wants a dir pool at /srv/images: "
        "a conflict, never redefined" in planned.out
    )
    assert cli("apply", str(tmp_path)).code == 1
    assert (tmp_path / "state" / "hv1.xml").read_bytes() == before  # not even the other pool


def test_a_volume_over_the_pools_commit_limit_is_refused(tmp_path):
    write(tmp_path, "hosts.yaml", host_yaml())
    write(
        tmp_path, "pools.yaml", pool_yaml("images", type="dir", path="/srv/images", overcommit={"ratio": 1.5})
    )
    assert cli("apply", str(tmp_path)).code == 0
    write(
        tmp_path,
        "web.yaml",
        """\
        apiVersion: virt-reconcile/v1
        kind: Domain
        metadata: {name: web}
        spec:
          memory: 1GiB
          disks:
            - volume: {pool: images, name: web.qcow2, size: 151GiB}
        """,
    )
    before = (tmp_path / "state" / "hv1.xml").read_bytes()
    planned = cli("plan", str(tmp_path))
    assert planned.code == 3, planned.out + planned.err
    assert (
        "✗ refused by policy: storage.commit[images]: 0B → 151GiB > 100GiB pool capacity × 1.5 = 150GiB "
        "(adding most: web +151GiB)" in planned.out
    )
    assert cli("apply", str(tmp_path)).code == 3
    assert (tmp_path / "state" / "hv1.xml").read_bytes() == before
    write(
        tmp_path, "pools.yaml", pool_yaml("images", type="dir", path="/srv/images", overcommit={"ratio": 2})
    )
    assert cli("apply", str(tmp_path)).code == 0  # raised limit: the same volume fits
    [volume] = observed_pools(tmp_path)["images"].volumes
    assert volume.capacity == 151 * GiB


def test_a_snapshot_keeps_pools_so_an_offline_plan_sees_them(tmp_path):
    write(tmp_path, "hosts.yaml", host_yaml())
    write(tmp_path, "pools.yaml", pool_yaml("images", type="dir", path="/srv/images"))
    assert cli("apply", str(tmp_path)).code == 0
    snap = tmp_path / "snap.json"
    assert cli("snapshot", str(tmp_path), "--out", str(snap)).code == 0
    [recorded] = json.loads(snap.read_text())["hosts"]["hv1"]["pools"]
    assert (recorded["name"], recorded["target"], recorded["active"]) == ("images", "/srv/images", True)
    offline = cli("plan", str(tmp_path), "--state", str(snap))
    assert offline.code == 0 and "storage.commit[images] 0B/100GiB" in offline.out, offline.out


def test_a_saved_plan_carries_pool_actions_and_the_storage_limits(tmp_path):
    write(tmp_path, "hosts.yaml", host_yaml())
    write(tmp_path, "pools.yaml", pool_yaml("images", type="dir", path="/srv/images"))
    saved = tmp_path / "plan.json"
    assert cli("plan", str(tmp_path), "--out", str(saved)).code == 2
    applied = cli("apply", str(tmp_path), "--plan", str(saved))
    assert applied.code == 0 and "+ pool images" in applied.out, applied.out + applied.err
    assert observed_pools(tmp_path)["images"].active
    # A volume over the limit, saved with the pool's ratio: re-judged at apply time, refused.
    write(
        tmp_path, "pools.yaml", pool_yaml("images", type="dir", path="/srv/images", overcommit={"ratio": 2})
    )
    write(
        tmp_path,
        "web.yaml",
        "apiVersion: virt-reconcile/v1\nkind: Domain\nmetadata: {name: web}\nspec:\n  memory: 1GiB\n"
        "  disks: [{volume: {pool: images, name: web.qcow2, size: 150GiB}}]\n",
    )
    assert cli("plan", str(tmp_path), "--out", str(saved)).code == 2
    document = json.loads(saved.read_text())
    assert document["hosts"]["hv1"]["poolRatios"] == {"images": 2.0}
    lowered = json.loads(saved.read_text())  # the same plan, signed with a ratio of 1: refused
    lowered["hosts"]["hv1"]["poolRatios"] = {"images": 1.0}
    lowered["signature"] = signature(lowered, signing_key())
    (tmp_path / "lowered.json").write_text(json.dumps(lowered))
    refused = cli("apply", str(tmp_path), "--plan", str(tmp_path / "lowered.json"))
    assert refused.code == 3 and "storage.commit[images]: 0B → 150GiB > 100GiB" in refused.out
    write(tmp_path, "pools.yaml", pool_yaml("images", type="dir", path="/srv/images"))  # not read by apply
    assert cli("apply", str(tmp_path), "--plan", str(saved)).code == 0  # judged with the saved ratio
    [volume] = observed_pools(tmp_path)["images"].volumes
    assert volume.capacity == 150 * GiB
