"""Volumes that must survive a plan: bases of overlays, images in use, formats (pure: no libvirt)."""

from __future__ import annotations

from reconciler.engine.actions import ActionKind
from reconciler.spec.models import Domain
from tests.helpers import domain_model
from tests.unit.test_volumes import (
    BASE,
    BASE_POOL,
    IMAGES,
    OWNER,
    GiB,
    defined,
    kinds,
    plan,
    pool,
    vol,
    volume_disk,
    web,
)

ROOT = f"{IMAGES}/vm08-root"


def doomed(name: str = "vm08") -> tuple[Domain, object]:
    """A managed domain whose root volume goes with it (deleteVolumes: true), as observed."""
    domain = web(volume_disk(name=f"{name}-root", deleteVolumes=True), name=name)
    owner = OWNER.model_copy(update={"delete_volumes": f"images/{name}-root"})
    return domain, defined(domain, owner)


def undefine_reason(host) -> str:
    return next(a.reason for a in host.actions if a.kind is ActionKind.UNDEFINE)


def test_a_volume_another_volume_backs_on_is_kept_with_its_pruned_domain():
    _, observed = doomed()
    overlay = vol("x13-root", 20 * GiB, backing=ROOT)
    host = plan([], (pool("images", vol("vm08-root", 20 * GiB), overlay),), (observed,), prune=True)
    assert kinds(host) == [("undefine", "vm08")]
    assert (
        "volume images/vm08-root kept: it is the backing file of volume images/x13-root"
        in undefine_reason(host)
    )


def test_a_volume_a_manifest_makes_its_volume_from_is_kept():
    _, observed = doomed()
    wanted = web(volume_disk(name="x14-root", source={"path": ROOT}), name="x14", state="stopped")
    host = plan([wanted], (pool("images", vol("vm08-root", 2 * GiB)),), (observed,), prune=True)
    assert ("delete-volume", "vm08") not in kinds(host)
    assert "volume images/vm08-root kept: x14 makes its volume from it" in undefine_reason(host)


def test_a_volume_a_staying_domain_has_as_a_path_disk_is_kept():
    _, observed = doomed()
    reader = domain_model("reader", disks=[{"path": ROOT}], state="stopped")
    host = plan(
        [reader], (pool("images", vol("vm08-root", 20 * GiB)),), (observed, defined(reader)), prune=True
    )
    assert ("delete-volume", "vm08") not in kinds(host)
    assert "volume images/vm08-root kept: reader uses it" in undefine_reason(host)


def test_a_base_is_deleted_with_its_only_overlay_when_both_go():
    _, base_owner = doomed("vm08")
    overlay_domain = web(volume_disk(name="x13-root", deleteVolumes=True), name="x13")
    overlay_owner = defined(overlay_domain, OWNER.model_copy(update={"delete_volumes": "images/x13-root"}))
    volumes = (vol("vm08-root", 20 * GiB), vol("x13-root", 20 * GiB, backing=ROOT))
    host = plan([], (pool("images", *volumes),), (base_owner, overlay_owner), prune=True)
    deleted = sorted(a.volume.name for a in host.actions if a.kind is ActionKind.DELETE_VOLUME)
    assert deleted == ["vm08-root", "x13-root"]


def test_a_chain_spares_every_base_under_an_overlay_that_stays():
    _, base_owner = doomed("vm08")
    middle = web(volume_disk(name="x13-root", deleteVolumes=True), name="x13")
    middle_owner = defined(middle, OWNER.model_copy(update={"delete_volumes": "images/x13-root"}))
    volumes = (
        vol("vm08-root", 20 * GiB),
        vol("x13-root", 20 * GiB, backing=ROOT),
        vol("x15-root", 20 * GiB, backing=f"{IMAGES}/x13-root"),  # stays: backs on x13-root
    )
    host = plan([], (pool("images", *volumes),), (base_owner, middle_owner), prune=True)
    assert [a for a in host.actions if a.kind is ActionKind.DELETE_VOLUME] == []


def test_a_base_another_domain_writes_is_refused():
    writer = domain_model("builder", disks=[{"path": BASE}])
    wanted = web(volume_disk(source={"path": BASE}))
    for mode in ("backing", "clone"):
        wanted = web(volume_disk(source={"path": BASE, "mode": mode}))
        host = plan([wanted], (pool(), BASE_POOL), (defined(writer, owner=None, active=True),))
        assert host.blocked
        assert any(
            f"the base image {BASE} is a disk of domain 'builder', which writes to it" in error
            for error in host.errors
        ), host.errors
        assert ("create-volume", "web") not in kinds(host)


def test_a_base_a_wanted_domain_writes_is_refused_too():
    builder = domain_model("builder", disks=[{"path": BASE}], state="stopped")
    host = plan([builder, web(volume_disk(source={"path": BASE}))], (pool(), BASE_POOL))
    assert any("is a disk of domain 'builder'" in error for error in host.errors)


def test_a_volume_of_another_format_than_the_disk_is_an_error_not_a_redefine():
    before = web(volume_disk(source={"path": BASE}))
    after = web(volume_disk(format="raw"))
    overlay = vol("web-root", 20 * GiB, fmt="qcow2", backing=BASE)
    host = plan([after], (pool("images", overlay), BASE_POOL), (defined(before, active=True),))
    assert host.blocked
    assert (
        "domain 'web': spec.disks[0].format: volume images/web-root is a qcow2 image and the disk says raw"
        in host.errors[0]
    )


def test_a_volume_in_its_pool_before_its_domain_is_adopted_with_a_warning():
    overlay = vol("web-root", 20 * GiB, backing=BASE)
    host = plan([web(volume_disk(source={"path": BASE}))], (pool("images", overlay), BASE_POOL))
    assert kinds(host) == [("define", "web"), ("start", "web")]
    assert host.warnings == (
        f"domain 'web': spec.disks[0].volume: images/web-root is in its pool already (20GiB qcow2 on "
        f"{BASE}): the domain is defined on it as it is, with its data (nothing is made from volume.from)",
    )


def test_turning_delete_volumes_off_reads_true_to_false():
    before, after = web(volume_disk(deleteVolumes=True)), web()
    owner = OWNER.model_copy(update={"delete_volumes": "images/web-root"})
    host = plan([after], (pool("images", vol("web-root", 20 * GiB)),), (defined(before, owner),))
    [update] = [a for a in host.actions if a.kind is ActionKind.UPDATE]
    assert [(c.field, c.before, c.after) for c in update.changes] == [
        ("disks[vda].deleteVolumes", True, False)
    ]
    assert not update.restart
