"""Seed volumes never take another's data: a disk named as a seed is a manifest error, an existing
volume that is not the domain's recorded seed is never written (a plan error), and a seed is deleted
only when it is the domain's own and no disk uses it (pruned, detached by an update); plans show a
domain's first seed as ``+ seed`` and the seed volume holds the largest seed, so a changed seed is
written in place; a saved plan's seed upload (its digest only) is re-checked like every action."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest

from reconciler.engine.actions import ActionKind, Phase, SeedUpload
from reconciler.engine.hypervisor import (
    DomainObservation,
    HostObservation,
    PoolObservation,
    VolumeObservation,
)
from reconciler.engine.plan import DesiredHost, HostPlan, Plan, build_host_plan
from reconciler.engine.pruning import DeletionRules
from reconciler.engine.seediso import build_seed_iso
from reconciler.engine.seeds import SEED_VOLUME_BYTES
from reconciler.errors import ManifestError, SavedPlanError
from reconciler.offline.recheck import recheck_actions
from reconciler.report import Printer, render_markdown, render_text, summary_line
from reconciler.spec.cloudinit import MAX_SEED_FILE_BYTES, Seed
from reconciler.spec.manifests import load_manifests
from reconciler.spec.models import Domain, Owner
from tests.helpers import domain_yaml, host_yaml, observed_domain, write

GiB = 2**30
POOL_YAML = """\
apiVersion: virt-reconcile/v1
kind: Pool
metadata: {name: images}
spec: {type: dir, path: /var/lib/images}
"""


def disk(name: str) -> dict:
    return {"volume": {"pool": "images", "name": name, "size": "1GiB"}}


def domain(name: str, *, cloud_init: bool = True, **spec: object) -> Domain:
    body: dict = {"memory": "1GiB", "disks": [disk(f"{name}-root")], **spec}
    if cloud_init:
        body["cloudInit"] = {"userData": {"file": "u"}}
    return Domain.model_validate(
        {"apiVersion": "virt-reconcile/v1", "kind": "Domain", "metadata": {"name": name}, "spec": body}
    )


def pool(*volumes: tuple[str, int], kind: str = "dir") -> PoolObservation:
    held = tuple(VolumeObservation(name, f"/var/lib/images/{name}", size, 0, "raw") for name, size in volumes)
    return PoolObservation("images", kind, "/var/lib/images", True, True, 2**40, 0, 2**40, held)


def seed_of(name: str, content: bytes = b"#cloud-config\n") -> Seed:
    return Seed.of(name, "images", {"user-data": content})


def desired(domains: dict[str, Domain], **rules: object) -> DesiredHost:
    seeds = {name: seed_of(name) for name, d in domains.items() if d.spec.cloud_init is not None}
    return DesiredHost(
        "hv1",
        "sandbox:/x",
        domains,
        lambda name: Owner(manifest="vms.yaml", seed=seeds[name].digest if name in seeds else ""),
        deletion=DeletionRules(**rules),
        seeds=seeds,
    )


def seeded(name: str, recorded: str, *, active: bool = True, **spec: object) -> DomainObservation:
    """``name`` as an earlier apply left it: its seed ``recorded`` attached from pool images."""
    owner = Owner(manifest="vms.yaml", seed=recorded)
    disks = spec.pop("disks", [disk(f"{name}-root")])
    return observed_domain(
        name, owner, active=active, memory="1GiB", disks=disks, cloudInit={"pool": "images"}, **spec
    )


def kinds(plan: HostPlan) -> list[tuple[str, str, str]]:
    return [(a.kind.value, a.domain, a.volume.name if a.volume else "") for a in plan.actions]


# ------------------------------------------------------------------------------ finding 1: uploads


def test_a_disk_named_as_another_domains_seed_volume_is_a_manifest_error(tmp_path):
    write(tmp_path, "hosts.yaml", host_yaml() + "---\n" + POOL_YAML)
    write(tmp_path, "x11.yaml", domain_yaml("x11", disks=[disk("x12-cidata.iso")]))
    write(tmp_path, "x12.yaml", domain_yaml("x12", disks=[disk("x12-root")], cloudInit={}))
    with pytest.raises(ManifestError) as info:
        load_manifests(tmp_path)
    [problem] = [str(p) for p in info.value.problems]
    assert problem.startswith("x11.yaml:")
    assert (
        "spec.disks[0].volume.name: volume images/x12-cidata.iso is the cloud-init seed volume of " in problem
    )
    assert "domain 'x12' on host 'hv1' (x12.yaml:" in problem
    write(tmp_path, "x12.yaml", domain_yaml("x12", disks=[disk("x12-root")]))  # no seed: no clash
    assert load_manifests(tmp_path).domains["hv1"]["x11"]


def test_cloud_init_added_where_another_domains_disk_has_the_seed_name_is_refused():
    """The reproduced loss: x11's data disk is named x12-cidata.iso (outside the manifests now);
    x12, managed and seedless, gets cloudInit: the plan refuses instead of writing x11's disk."""
    x11 = observed_domain("x11", None, active=True, memory="1GiB", disks=[disk("x12-cidata.iso")])
    x12 = observed_domain(
        "x12", Owner(manifest="vms.yaml"), active=False, memory="1GiB", disks=[disk("x12-root")]
    )
    observed = HostObservation(
        16, 64 * GiB, (x11, x12), pools=(pool(("x12-root", GiB), ("x12-cidata.iso", GiB)),)
    )
    plan = build_host_plan(desired({"x12": domain("x12")}), observed)
    assert "reseed" not in [kind for kind, _, _ in kinds(plan)]
    assert plan.blocked
    assert any("volume images/x12-cidata.iso is a disk of domain 'x11'" in e for e in plan.errors), (
        plan.errors
    )


def test_a_volume_of_the_seeds_name_that_the_domain_never_recorded_is_never_written():
    """A managed domain given cloudInit, beside a volume of its seed's name it never recorded."""
    managed = observed_domain("web", Owner(manifest="vms.yaml"), memory="1GiB", disks=[disk("web-root")])
    observed = HostObservation(
        16, 64 * GiB, (managed,), pools=(pool(("web-root", GiB), ("web-cidata.iso", 4 * GiB)),)
    )
    plan = build_host_plan(desired({"web": domain("web")}), observed)
    assert [kind for kind, _, _ in kinds(plan) if kind == "reseed"] == []
    [error] = [e for e in plan.errors if "spec.cloudInit" in e]
    assert "volume images/web-cidata.iso exists and is not a seed the domain's ownership records" in error
    assert "virsh vol-delete --pool images web-cidata.iso" in error


def test_a_seed_an_interrupted_first_apply_left_is_written_again_and_blocks_nothing():
    """The define never happened after the upload: no disk uses the volume, so the domain being
    defined takes it (a warning; the adapter writes only over a cidata ISO or zeros)."""
    observed = HostObservation(16, 64 * GiB, (), pools=(pool(("web-cidata.iso", SEED_VOLUME_BYTES)),))
    plan = build_host_plan(desired({"web": domain("web"), "db": domain("db", cloud_init=False)}), observed)
    assert not plan.blocked, plan.errors
    [reseed] = [a for a in plan.actions if a.kind is ActionKind.RESEED]
    assert (reseed.domain, reseed.phase) == ("web", Phase.CREATE_VOLUME)
    assert {a.domain for a in plan.actions if a.kind is ActionKind.DEFINE} == {"web", "db"}
    assert any("web-cidata.iso exists and no disk uses it: taken as the seed" in w for w in plan.warnings)


def test_the_domains_own_recorded_seed_is_rewritten_in_place():
    old = "0123456789abcdef"
    observed = HostObservation(
        16,
        64 * GiB,
        (seeded("web", old),),
        pools=(pool(("web-root", GiB), ("web-cidata.iso", SEED_VOLUME_BYTES)),),
    )
    [action] = build_host_plan(desired({"web": domain("web")}), observed).actions
    assert (action.kind, action.phase, action.restart) == (ActionKind.RESEED, Phase.RESEED, False)
    assert (action.volume.capacity, action.volume.previous, action.volume.allocation) == (
        SEED_VOLUME_BYTES,
        SEED_VOLUME_BYTES,
        0,
    )


# ------------------------------------------------------------------------------ finding 6: in place


def test_the_largest_seed_fits_the_seed_volume_so_a_running_guest_keeps_its_file():
    biggest = Seed.of(
        "w" * 63,
        "images",
        {name: b"#" * MAX_SEED_FILE_BYTES for name in ("user-data", "meta-data", "network-config")},
    )
    assert len(build_seed_iso(biggest)) <= SEED_VOLUME_BYTES


def test_a_running_domains_seed_volume_made_again_says_a_restart_is_needed():
    """An older seed volume made at its image's size, too small for the new seed: the volume is made
    again, a new file the running QEMU does not have open."""
    observed = HostObservation(
        16,
        64 * GiB,
        (seeded("web", "0123456789abcdef", active=True),),
        pools=(pool(("web-root", GiB), ("web-cidata.iso", 4096)),),
    )
    [action] = build_host_plan(desired({"web": domain("web")}), observed).actions
    assert action.kind is ActionKind.RESEED and action.restart
    assert action.volume.capacity == SEED_VOLUME_BYTES
    assert "after a restart from the host" in action.reason


# --------------------------------------------------------------------------- finding 2, 9: deletes


def test_pruning_never_deletes_a_seed_named_volume_a_wanted_domain_uses_as_its_disk():
    x12 = seeded("x12", "0123456789abcdef", disks=[disk("x12-root")])
    observed = HostObservation(
        16, 64 * GiB, (x12,), pools=(pool(("x12-root", GiB), ("x12-cidata.iso", GiB)),)
    )
    x11 = domain("x11", cloud_init=False, disks=[disk("x12-cidata.iso")])
    plan = build_host_plan(desired({"x11": x11}, allow=True), observed)
    assert ("delete-volume", "x12", "x12-cidata.iso") not in kinds(plan)
    assert ("undefine", "x12", "") in kinds(plan)
    assert any("x12-cidata.iso is kept: it is a disk of domain 'x11'" in w for w in plan.warnings)


def test_a_seed_never_recorded_is_not_deleted_with_its_domain():
    unrecorded = seeded("web", "")  # a cdrom of that name, but no upload of ours recorded
    observed = HostObservation(
        16, 64 * GiB, (unrecorded,), pools=(pool(("web-root", GiB), ("web-cidata.iso", GiB)),)
    )
    assert kinds(build_host_plan(desired({}, allow=True), observed)) == [("undefine", "web", "")]


def test_removing_cloud_init_deletes_the_seed_after_the_update_that_detaches_it():
    observed = HostObservation(
        16,
        64 * GiB,
        (seeded("web", "0123456789abcdef"),),
        pools=(pool(("web-root", GiB), ("web-cidata.iso", GiB)),),
    )
    plan = build_host_plan(desired({"web": domain("web", cloud_init=False)}), observed)
    assert [(k, n) for k, _, n in kinds(plan)] == [("update", ""), ("delete-volume", "web-cidata.iso")]
    update, delete = plan.actions
    assert update.phase < delete.phase == Phase.RESEED
    assert (delete.changes[0].before, delete.changes[0].after) == ("sha256:0123456789abcdef", None)


def test_a_running_domain_keeps_its_seed_open_on_an_lvm_pool_until_its_restart():
    lvm = PoolObservation(
        "images",
        "logical",
        "/dev/vg",
        True,
        True,
        2**40,
        0,
        2**40,
        (
            VolumeObservation("web-root", "/dev/vg/web-root", GiB, GiB),
            VolumeObservation("web-cidata.iso", "/dev/vg/web-cidata.iso", GiB, GiB),
        ),
    )
    observed = HostObservation(16, 64 * GiB, (seeded("web", "0123456789abcdef", active=True),), pools=(lvm,))
    plan = build_host_plan(desired({"web": domain("web", cloud_init=False)}), observed)
    assert [k for k, _, _ in kinds(plan)] == ["update"]
    assert any("old seed volume images/web-cidata.iso is kept" in w for w in plan.warnings)


# ------------------------------------------------------------------------------------ F2: labels


def test_a_first_seed_reads_as_a_write_and_a_changed_one_as_a_rewrite():
    new = build_host_plan(desired({"web": domain("web")}), HostObservation(16, 64 * GiB, (), pools=(pool(),)))
    changed = build_host_plan(
        desired({"web": domain("web")}),
        HostObservation(
            16,
            64 * GiB,
            (seeded("web", "0123456789abcdef"),),
            pools=(pool(("web-root", GiB), ("web-cidata.iso", GiB)),),
        ),
    )
    for host_plan, mark, other in ((new, "+ seed web", "reseed"), (changed, "~ reseed web", "+ seed")):
        out = io.StringIO()
        plan = Plan(hosts={"hv1": host_plan})
        render_text(plan, Printer(out, color=False))
        assert mark in out.getvalue() and other not in out.getvalue()
        assert "1 seed(s) to write" in summary_line(plan)
        assert "rewrite" not in summary_line(plan)
    markdown = render_markdown(Plan(hosts={"hv1": new}))
    assert "| `+` | seed | `web` |" in markdown
    out = io.StringIO()
    render_text(Plan(hosts={"hv1": new}), Printer(out, color=False))
    assert "cloud-init seed sha256:" in out.getvalue() and "none →" not in out.getvalue()


# ------------------------------------------------------------------------ F7: saved plans, re-check


def test_a_saved_seed_upload_is_rechecked_against_the_host_it_will_write():
    plan = build_host_plan(
        desired({"web": domain("web")}), HostObservation(16, 64 * GiB, (), pools=(pool(),))
    )
    assert recheck_actions("hv1", HostObservation(16, 64 * GiB, (), pools=(pool(),)), plan.actions)
    taken = HostObservation(16, 64 * GiB, (), pools=(pool(("web-cidata.iso", GiB)),))
    with pytest.raises(SavedPlanError, match=r"web-cidata\.iso is there and is not the domain's own seed"):
        recheck_actions("hv1", taken, plan.actions)
    unbuilt = [replace(a, seed=SeedUpload(a.seed.digest, b"")) if a.seed else a for a in plan.actions]
    with pytest.raises(SavedPlanError, match="not built from the manifests' files"):
        recheck_actions("hv1", HostObservation(16, 64 * GiB, (), pools=(pool(),)), unbuilt)
    elsewhere = [
        replace(a, volume=replace(a.volume, name="web-root")) if a.kind is ActionKind.RESEED else a
        for a in plan.actions
    ]
    with pytest.raises(SavedPlanError, match="images/web-root is not the domain's seed volume"):
        recheck_actions("hv1", HostObservation(16, 64 * GiB, (), pools=(pool(),)), elsewhere)


def test_a_seed_deleted_in_the_reseed_phase_needs_the_update_that_detaches_it():
    observed = HostObservation(
        16,
        64 * GiB,
        (seeded("web", "0123456789abcdef"),),
        pools=(pool(("web-root", GiB), ("web-cidata.iso", GiB)),),
    )
    update, delete = build_host_plan(desired({"web": domain("web", cloud_init=False)}), observed).actions
    assert len(recheck_actions("hv1", observed, (update, delete))) == 2
    with pytest.raises(SavedPlanError, match="detached by an update of this plan"):
        recheck_actions("hv1", observed, (delete,))
