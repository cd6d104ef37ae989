"""A move of a domain whose disks are volumes: refused while the new host lacks a volume (the guest
would boot a new disk, its data left behind), done when the volume is there already (pure: no libvirt)."""

from __future__ import annotations

from reconciler.engine.fleet import plan_fleet
from reconciler.engine.hypervisor import HostObservation, PoolObservation
from reconciler.engine.plan import DesiredHost, HostPlan, Plan
from reconciler.engine.pruning import DeletionRules
from reconciler.engine.volumes import volumes_deleted_with
from reconciler.spec.models import Domain
from tests.unit.test_volumes import BASE, BASE_POOL, OWNER, GiB, defined, kinds, pool, vol, volume_disk, web

HV1 = OWNER.model_copy(update={"host": "hv1"})
HV2 = OWNER.model_copy(update={"host": "hv2"})


def move(domain: Domain, target_pools: tuple[PoolObservation, ...]) -> dict[str, HostPlan]:
    """``domain`` runs on hv1 on its volume, and its manifest now says hv2."""
    owner = HV2.model_copy(update={"delete_volumes": volumes_deleted_with(domain.spec)})
    want = {
        "hv1": DesiredHost("hv1", "test:///1", {}, lambda _n: HV1, DeletionRules(allow=True)),
        "hv2": DesiredHost("hv2", "test:///2", {domain.name: domain}, lambda _n: owner),
    }
    observed = {
        "hv1": HostObservation(
            cpus=8,
            memory=16 * GiB,
            domains=(defined(domain, HV1, active=True),),
            pools=(pool("images", vol("web-root", 20 * GiB)), BASE_POOL),
        ),
        "hv2": HostObservation(cpus=8, memory=16 * GiB, domains=(), pools=target_pools),
    }
    return plan_fleet(want, observed, {}, ["hv1", "hv2"])


def test_a_move_to_a_host_without_the_volume_is_an_error_and_nothing_moves():
    plans = move(web(), (pool("images"),))
    # The error holds both halves of the move (exit 1): web keeps running on hv1, nothing on hv2.
    assert plans["hv1"].actions == () and plans["hv2"].actions == ()
    [held] = plans["hv2"].held
    assert (
        held.domain == "web"
        and (
            "domain 'web': spec.disks[0].volume: images/web-root is not in pool 'images' on hv2: the move "
            "from hv1 would start the domain on a new disk while its data stays on hv1. Copy the volume"
        )
        in held.reason
    )
    [orphan] = plans["hv1"].orphans
    assert orphan.domain == "web" and not orphan.delete and orphan.reason == held.reason
    assert Plan(hosts=plans).has_errors


def test_a_volume_made_from_a_base_image_is_a_new_disk_too():
    plans = move(web(volume_disk(source={"path": BASE})), (pool("images"), BASE_POOL))
    assert plans["hv1"].actions == () and plans["hv2"].actions == ()
    assert "images/web-root is not in pool 'images' on hv2" in plans["hv2"].held[0].reason


def test_a_move_to_a_host_holding_the_volume_goes_ahead_on_it():
    plans = move(web(), (pool("images", vol("web-root", 20 * GiB)),))
    assert not plans["hv2"].errors
    assert kinds(plans["hv1"]) == [("move", "web")]
    assert kinds(plans["hv2"]) == [("move", "web"), ("start", "web")]
    assert "images/web-root is in its pool already" in plans["hv2"].warnings[0]
