"""Volumes on domain disks, planned against hand-made pool observations (pure: no libvirt)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from reconciler.engine.actions import ActionKind, Phase
from reconciler.engine.diff import spec_changes
from reconciler.engine.hypervisor import (
    DomainObservation,
    HostObservation,
    PoolObservation,
    VolumeObservation,
)
from reconciler.engine.plan import DesiredHost, HostPlan, build_host_plan
from reconciler.engine.pruning import DeletionRules
from reconciler.engine.syncstate import Sync, domain_states
from reconciler.engine.volumes import volumes_deleted_with
from reconciler.libvirtxml.merge import merge_domain
from reconciler.libvirtxml.parse import parse_domain
from reconciler.libvirtxml.render import render_domain
from reconciler.spec.disks import Disk
from reconciler.spec.models import Domain, DomainSpec, Owner
from reconciler.spec.storage import Pool
from tests.helpers import domain_model

GiB = 1024**3
OWNER = Owner(manifest="m.yaml", revision="r1", spec_hash="h")
BASE = "/srv/base/debian.qcow2"
IMAGES = "/var/lib/libvirt/images"


def volume_disk(name: str = "web-root", size: str = "20GiB", **extra: object) -> dict:
    volume: dict[str, object] = {"pool": "images", "name": name, "size": size}
    if "source" in extra:
        volume["from"] = extra.pop("source")
    return {"volume": volume, **extra}


def web(*disks: dict, name: str = "web", **spec: object) -> Domain:
    return domain_model(name, disks=list(disks or [volume_disk()]), **spec)


def pool(
    name: str = "images", *volumes: VolumeObservation, kind: str = "dir", target: str = IMAGES
) -> PoolObservation:
    return PoolObservation(
        name=name,
        type=kind,
        target=target,
        active=True,
        autostart=True,
        capacity=100 * GiB,
        allocation=0,
        available=100 * GiB,
        volumes=volumes,
    )


def vol(
    name: str, capacity: int, folder: str = IMAGES, fmt: str = "qcow2", backing: str = ""
) -> VolumeObservation:
    return VolumeObservation(name, f"{folder}/{name}", capacity, 0, fmt, backing)


BASE_POOL = pool("base", vol("debian.qcow2", 2 * GiB, folder="/srv/base"), target="/srv/base")


def defined(domain: Domain, owner: Owner = OWNER, active: bool = False) -> DomainObservation:
    """The domain as libvirt holds it after an apply of ``domain``."""
    return DomainObservation(domain.name, render_domain(domain.name, domain.spec, owner), active, False)


def plan(
    domains: list[Domain],
    pools: tuple[PoolObservation, ...],
    observed: tuple[DomainObservation, ...] = (),
    *,
    prune: bool = False,
    wanted_pools: dict[str, Pool] | None = None,
) -> HostPlan:
    wanted = {d.name: d for d in domains}
    return build_host_plan(
        DesiredHost(
            "hv1",
            "test:///",
            wanted,
            lambda name: OWNER.model_copy(update={"delete_volumes": volumes_deleted_with(wanted[name].spec)}),
            DeletionRules(allow=prune),
            pools=wanted_pools or {},
        ),
        HostObservation(cpus=8, memory=16 * GiB, domains=observed, pools=pools),
    )


def kinds(host: HostPlan) -> list[tuple[str, str]]:
    return [(a.kind.value, a.domain) for a in host.actions]


# ------------------------------------------------------------------------------------------ model


def test_a_disk_is_a_path_or_a_volume_never_both_nor_neither():
    with pytest.raises(ValidationError, match="exactly one of 'path' or 'volume'"):
        Disk.model_validate({"path": "/x.qcow2", "volume": {"pool": "p", "name": "v", "size": "1GiB"}})
    with pytest.raises(ValidationError, match="exactly one of 'path' or 'volume'"):
        Disk.model_validate({"format": "raw"})


def test_a_manifest_volume_needs_a_size_and_an_overlay_is_qcow2():
    with pytest.raises(ValidationError, match="a volume needs a size"):
        Disk.model_validate({"volume": {"pool": "p", "name": "v"}})
    with pytest.raises(ValidationError, match="format must be qcow2"):
        Disk.model_validate(volume_disk(source={"path": BASE}, format="raw"))
    with pytest.raises(ValidationError, match="deleteVolumes is for a volume disk"):
        Disk.model_validate({"path": "/x.qcow2", "deleteVolumes": True})


def test_two_disks_of_one_domain_cannot_share_a_volume():
    with pytest.raises(ValidationError, match="two disks use volume images/web-root"):
        DomainSpec.model_validate({"memory": "1GiB", "disks": [volume_disk(), volume_disk()]})


def test_a_volume_disk_renders_as_a_pool_volume_and_reads_back_named_not_sized():
    domain = web(volume_disk(deleteVolumes=True))
    xml = render_domain("web", domain.spec, OWNER.model_copy(update={"delete_volumes": "images/web-root"}))
    assert "<disk type='volume' device='disk'>" in xml
    assert '<source pool="images" volume="web-root"/>' in xml
    disk = parse_domain(xml).spec.disks[0]
    assert (disk.volume.pool, disk.volume.name, disk.volume.size) == ("images", "web-root", None)
    assert disk.delete_volumes is True  # from the ownership record: the manifest may be gone


def test_switching_a_disk_from_a_path_to_a_volume_rewrites_its_source():
    old = domain_model("web", disks=[{"path": "/var/lib/libvirt/images/web.qcow2"}])
    xml = render_domain("web", old.spec, OWNER)
    merged = merge_domain(xml, web().spec, OWNER)
    assert 'type="volume"' in merged and '<source pool="images" volume="web-root"/>' in merged
    assert parse_domain(merged).spec.disks[0].volume.name == "web-root"
    back = parse_domain(merge_domain(merged, old.spec, OWNER)).spec.disks[0]
    assert (back.path, back.volume) == ("/var/lib/libvirt/images/web.qcow2", None)


def test_a_defines_changes_show_the_volume_field_by_field():
    fields = {c.field: c.after for c in spec_changes(None, web(volume_disk(source={"path": BASE})).spec)}
    assert fields["disks[vda].volume.size"] == "20GiB"
    assert fields["disks[vda].volume.from.path"] == BASE
    assert "disks[vda].deleteVolumes" not in fields  # unset: not worth a line


# ------------------------------------------------------------------------------------------ plan


def test_a_missing_volume_is_created_before_its_domain_is_defined():
    host = plan([web(volume_disk(source={"path": BASE}))], (pool(), BASE_POOL))
    assert kinds(host) == [("create-volume", "web"), ("define", "web"), ("start", "web")]
    create = host.actions[0]
    assert create.phase is Phase.CREATE_VOLUME < Phase.DEFINE
    assert create.volume is not None
    assert (create.volume.pool, create.volume.name, create.volume.capacity) == (
        "images",
        "web-root",
        20 * GiB,
    )
    assert (create.volume.source, create.volume.mode, create.volume.format) == (BASE, "backing", "qcow2")
    assert create.volume.allocation == 0  # an overlay allocates almost nothing at first
    assert "qcow2 overlay on /srv/base/debian.qcow2" in create.reason


def test_allocation_estimates_a_clone_and_a_raw_lvm_volume_at_their_size():
    clone = plan([web(volume_disk(source={"path": BASE, "mode": "clone"}))], (pool(), BASE_POOL))
    assert clone.actions[0].volume.allocation == 20 * GiB
    lvm = pool("images", kind="logical", target="/dev/vg0")
    raw = plan([web(volume_disk(format="raw"))], (lvm,))
    assert raw.actions[0].volume.allocation == 20 * GiB
    empty = plan([web(volume_disk())], (pool(),))
    assert empty.actions[0].volume.allocation == 0 and empty.actions[0].reason == "empty qcow2"


def test_an_lvm_pool_takes_raw_volumes_only():
    host = plan([web(volume_disk())], (pool("images", kind="logical", target="/dev/vg0"),))
    assert host.blocked and "must be raw" in host.errors[0]


def test_an_applied_volume_domain_plans_nothing():
    domain = web(volume_disk(source={"path": BASE}))
    host = plan([domain], (pool("images", vol("web-root", 20 * GiB)), BASE_POOL), (defined(domain),))
    assert kinds(host) == [("start", "web")]  # defined off: only the start is left


def test_a_bigger_size_grows_the_volume_live_without_touching_the_definition():
    before, after = web(), web(volume_disk(size="30GiB"))
    host = plan([after], (pool("images", vol("web-root", 20 * GiB)),), (defined(before, active=True),))
    assert kinds(host) == [("resize-volume", "web")]
    resize = host.actions[0]
    assert resize.phase is Phase.VOLUME_GROW
    assert (resize.volume.previous, resize.volume.capacity) == (20 * GiB, 30 * GiB)
    assert [(c.field, c.before, c.after) for c in resize.changes] == [
        ("disks[vda].volume.size", "20GiB", "30GiB")
    ]
    assert "live" in resize.reason
    assert domain_states(host)["web"].sync is Sync.OUT_OF_SYNC


def test_a_smaller_size_is_refused_with_the_reason_and_nothing_is_applied():
    host = plan(
        [web(volume_disk(size="10GiB"))], (pool("images", vol("web-root", 20 * GiB)),), (defined(web()),)
    )
    assert host.blocked
    assert host.errors == (
        "domain 'web': spec.disks[0].volume.size: shrinking images/web-root 20GiB → 10GiB would destroy "
        "data; volumes only grow",
    )


def test_an_lvm_volume_rounded_up_to_its_extent_is_not_a_shrink():
    lvm = pool(
        "images",
        vol("web-root", 10 * GiB + 2 * 1024**2, folder="/dev/vg0", fmt="raw"),
        kind="logical",
        target="/dev/vg0",
    )
    domain = web(volume_disk(size="10GiB", format="raw"))
    assert kinds(plan([domain], (lvm,), (defined(domain),))) == [("start", "web")]


def test_a_missing_pool_and_a_base_outside_every_pool_are_errors_before_anything_runs():
    no_pool = plan([web()], ())
    assert no_pool.blocked and "pool 'images' does not exist on hv1" in no_pool.errors[0]
    outside = plan([web(volume_disk(source={"path": "/home/me/base.qcow2"}))], (pool(),))
    assert outside.blocked
    assert "/home/me/base.qcow2 is not a volume of any storage pool on hv1" in outside.errors[0]
    assert "add a Pool for /home/me" in outside.errors[0]


def test_a_base_larger_than_the_volume_is_refused():
    host = plan([web(volume_disk(size="1GiB", source={"path": BASE}))], (pool(), BASE_POOL))
    assert host.blocked and "larger than the volume's size 1GiB" in host.errors[0]


def test_a_pool_this_plan_makes_takes_new_volumes_and_bases_in_its_folder():
    images = Pool.model_validate(
        {
            "apiVersion": "virt-reconcile/v1",
            "kind": "Pool",
            "metadata": {"name": "images"},
            "spec": {"type": "dir", "path": IMAGES},
        }
    )
    base = images.model_copy(
        update={
            "metadata": images.metadata.model_copy(update={"name": "base"}),
            "spec": images.spec.model_copy(update={"path": "/srv/base"}),
        }
    )
    host = plan([web(volume_disk(source={"path": BASE}))], (), wanted_pools={"images": images, "base": base})
    assert ("create-volume", "web") in kinds(host)
    assert not [e for e in host.errors if "volume" in e]


def test_a_volume_is_the_file_in_its_pool_one_disk_one_domain():
    squatter = domain_model("old", disks=[{"path": f"{IMAGES}/web-root"}])
    host = plan([web()], (pool(),), (defined(squatter, owner=None),))
    assert host.blocked
    assert any("spec.disks[0].volume volume images/web-root is the disk of 'old'" in e for e in host.errors)


def test_a_conflicting_domain_gets_no_volume():
    stranger = DomainObservation("web", render_domain("web", web().spec, None), False, False)
    host = plan([web()], (pool(),), (stranger,))
    assert kinds(host) == [] and host.conflicts


# ------------------------------------------------------------------------------------ deletion


def test_a_pruned_domain_keeps_its_volume_unless_its_disk_said_delete_volumes():
    kept, doomed = web(name="a"), web(volume_disk(name="b-root", deleteVolumes=True), name="b")
    doomed_owner = OWNER.model_copy(update={"delete_volumes": "images/b-root", "root": ""})
    stay = [web(volume_disk(name=f"{n}-root"), name=n, state="stopped") for n in "cde"]
    observed = (defined(kept), defined(doomed, doomed_owner), *map(defined, stay))
    volumes = [vol(f"{n}-root", 20 * GiB) for n in "bcde"]
    host = plan(stay, (pool("images", vol("web-root", 20 * GiB), *volumes),), observed, prune=True)
    assert not host.errors
    assert kinds(host) == [("undefine", "a"), ("undefine", "b"), ("delete-volume", "b")]
    delete = host.actions[-1]
    assert delete.phase is Phase.DELETE_VOLUME > Phase.UNDEFINE
    assert (delete.volume.name, delete.volume.previous) == ("b-root", 20 * GiB)


def test_a_volume_a_wanted_domain_uses_is_never_deleted_with_a_renamed_domain():
    old = web(volume_disk(deleteVolumes=True), name="old")
    owner = OWNER.model_copy(update={"delete_volumes": "images/web-root"})
    host = plan(
        [web(name="new")], (pool("images", vol("web-root", 20 * GiB)),), (defined(old, owner),), prune=True
    )
    assert ("delete-volume", "old") not in kinds(host)
    undefine = next(a for a in host.actions if a.kind is ActionKind.UNDEFINE)
    assert "volume images/web-root kept: new uses it" in undefine.reason


def test_turning_delete_volumes_on_rewrites_metadata_without_a_restart():
    before, after = web(), web(volume_disk(deleteVolumes=True))
    host = plan([after], (pool("images", vol("web-root", 20 * GiB)),), (defined(before, active=True),))
    update = next(a for a in host.actions if a.kind is ActionKind.UPDATE)
    assert [c.field for c in update.changes] == ["disks[vda].deleteVolumes"]
    assert not update.restart
    assert parse_domain(update.xml).owner.delete_volumes == "images/web-root"
