"""Volumes on domain disks: what a host's plan creates, grows or deletes in its storage pools (pure).

A disk with ``volume`` names a volume of a pool on the domain's host. The domain's libvirt
definition holds only the volume's pool and name (``<disk type='volume'>``); its size and base image
live in the pool, so they are compared here, against the host's pool observations, and never by the
domain diff (``diff.with_volume_details`` hides them from it):

- a volume the pool lacks is created (``create-volume``) before the domain is defined: empty, a qcow2
  overlay on its base image (``backing``) or a full copy of it (``clone``);
- a volume smaller than its ``size`` is grown (``resize-volume``) in the grow phase: live when the
  domain runs, so the guest sees the new size;
- a volume larger than its ``size`` is an error of the host's plan: shrinking would destroy data;
- a volume whose image format (as libvirt reads it) is not the disk's ``format`` is an error: QEMU
  would read, and write, a qcow2 image as raw (or the reverse), and an image's format never changes;
- a volume already in its pool when its domain arrives is used as it is, with its data: the plan
  warns so (an apply cut short after the create leaves that too);
- a base image must be a volume of one of the host's pools (libvirt reads its format and size there,
  and can copy only a volume), at most as large as the new volume, and no domain's disk (every
  disk is read-write: an overlay on, or a copy of, an image being written is corrupt);
- a pool the host lacks and no Pool manifest makes is an error.

Nothing is applied on a host whose plan has an error. A pruned domain's volumes are deleted after
its undefine only when its disks said ``deleteVolumes: true`` (recorded in its ownership metadata,
since the manifest is gone by then), and never one that is still needed: a disk of another domain
of the host (kept or wanted), the backing file of a volume that stays, or a manifest's
``from.path``. A move never creates, moves or deletes a volume on the host it leaves, and is an
error of the host it reaches while a volume of the domain is missing there: a new volume would boot
the guest on a blank (or freshly based) disk while its data stays behind, tracked by nothing.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from reconciler.engine.actions import Action, ActionKind, Phase, VolumeChange
from reconciler.engine.diff import Change
from reconciler.engine.domainplan import PlanDraft
from reconciler.engine.hypervisor import HostObservation, PoolObservation, VolumeObservation
from reconciler.engine.pruning import Seen
from reconciler.libvirtxml.parse import ParsedDomain
from reconciler.spec.disks import Disk
from reconciler.spec.models import Domain, DomainSpec
from reconciler.spec.sizes import KIB, format_size
from reconciler.spec.storage import Pool, Volume

#: An LVM volume is a whole number of extents (4 MiB by default): a logical volume up to one extent
#: larger than asked is the size asked, not a shrink to refuse.
LVM_EXTENT = 4 * 1024**2


@dataclass(frozen=True)
class PoolView:
    """A pool as the plan sees it: observed, or made by this plan from its Pool manifest (then it
    has no volumes yet). ``known`` is False when its volumes cannot be listed (not running)."""

    name: str
    type: str
    target: str
    volumes: Mapping[str, VolumeObservation] = field(default_factory=dict)
    known: bool = True

    def path_of(self, name: str) -> str:
        """Where volume ``name`` is (or will be): as observed, else the pool's target and the name."""
        found = self.volumes.get(name)
        return found.path if found is not None else posixpath.join(self.target, name)


def pools_in_view(observed: HostObservation, wanted: Mapping[str, Pool] | None = None) -> dict[str, PoolView]:
    """Every pool of the host by name, and those its Pool manifests make that it lacks yet."""
    views = {pool.name: _view(pool) for pool in observed.pools}
    for name, pool in (wanted or {}).items():
        if name not in views:
            views[name] = PoolView(name, pool.spec.type, pool.target, known=False)
    return views


def _view(pool: PoolObservation) -> PoolView:
    """An observed pool; its volumes are known only while it runs (libvirt lists none otherwise)."""
    return PoolView(
        pool.name,
        pool.type,
        pool.target,
        {volume.name: volume for volume in pool.volumes},
        known=pool.active,
    )


def volumes_deleted_with(spec: DomainSpec) -> str:
    """The ownership record of the volumes deleted with the domain: ``pool/name`` of each disk that
    says ``deleteVolumes: true``, space-separated."""
    return " ".join(sorted(d.volume.key for d in spec.disks if d.volume is not None and d.delete_volumes))


def disk_identity(disk: Disk, pools: Mapping[str, PoolView]) -> str:
    """What a disk uses on its host, as one string: its path, or its volume's path in the pool (so
    a path disk and a volume disk on the same file are seen as one image)."""
    if disk.volume is None:
        return disk.path or ""
    pool = pools.get(disk.volume.pool)
    return pool.path_of(disk.volume.name) if pool is not None else f"volume {disk.volume.key}"


@dataclass(frozen=True)
class DomainAt:
    """How a domain whose volumes are planned stands on the host: ``running`` now (a growth is done
    live), ``arriving`` (defined or moved in by this plan: a volume found already is adopted as it
    is), and ``writers``: each image path a domain of the host writes, with that domain (a base
    image must not be one)."""

    running: bool = False
    arriving: bool = False
    writers: Mapping[str, str] = field(default_factory=dict)
    moved_from: str = ""  # the host a move brings the domain from ("" when it does not move in)


def plan_volumes(plan: PlanDraft, domain: Domain, pools: Mapping[str, PoolView], at: DomainAt) -> None:
    """The volume actions (or errors) for each volume disk of a domain the plan defines or keeps."""
    for index, disk in enumerate(domain.spec.disks):
        if disk.volume is not None:
            _plan_volume(plan, domain.name, index, disk, pools, at)


def _plan_volume(
    plan: PlanDraft, name: str, index: int, disk: Disk, pools: Mapping[str, PoolView], at: DomainAt
) -> None:
    """One volume disk: created when its pool lacks it, grown when smaller, an error when larger
    (a shrink), of another format, or when it cannot be made in its pool."""
    volume = disk.volume
    assert volume is not None and volume.size is not None  # a manifest's volume has its size
    where = f"domain {name!r}: spec.disks[{index}].volume"
    pool = pools.get(volume.pool)
    if pool is None:
        plan.errors.append(
            f"{where}.pool: pool {volume.pool!r} does not exist on {plan.host}, and no Pool manifest makes it"
        )
        return
    problem = _misfit(disk, pool)
    if problem:
        plan.errors.append(f"{where}: {problem}")
        return
    found = pool.volumes.get(volume.name)
    if found is None and at.moved_from:
        plan.errors.append(f"{where}: {_left_behind(volume, pool, plan.host, at.moved_from)}")
    elif found is None:
        _plan_create(plan, name, where, disk, pools, at.writers)
    elif _as_found(plan, f"domain {name!r}: spec.disks[{index}]", disk, found, arriving=at.arriving):
        shrink = _plan_growth(plan, name, disk, pool, found, running=at.running)
        if shrink:
            plan.errors.append(f"{where}.size: {shrink}")


def _left_behind(volume: Volume, pool: PoolView, host: str, source: str) -> str:
    """Why a moving domain cannot arrive without its volume: it would boot a new disk on ``host``
    while its data stays on ``source``, in a volume nothing tracks any more."""
    unseen = "" if pool.known else f" (pool {pool.name!r} does not run yet: its volumes cannot be listed)"
    return (
        f"{volume.key} is not in pool {pool.name!r} on {host}{unseen}: the move from {source} would start "
        f"the domain on a new disk while its data stays on {source}. Copy the volume into pool "
        f"{pool.name!r} on {host} first (same name and format), then apply again; for a new disk on "
        f"purpose, remove the domain from git and apply, then add it for {host}"
    )


def _as_found(plan: PlanDraft, where: str, disk: Disk, found: VolumeObservation, *, arriving: bool) -> bool:
    """Whether a volume in its pool can be the disk: an error when its image is in another format
    (libvirt's word; none said, none compared), a warning when a domain arriving adopts it."""
    assert disk.volume is not None
    if found.format and found.format != disk.format:
        plan.errors.append(
            f"{where}.format: volume {disk.volume.key} is a {found.format} image and the disk says "
            f"{disk.format}: QEMU would read and write it as {disk.format} and corrupt it (an image's "
            f"format never changes; say format: {found.format})"
        )
        return False
    if arriving:
        on = f" on {found.backing}" if found.backing else ""
        plan.warnings.append(
            f"{where}.volume: {disk.volume.key} is in its pool already ({format_size(found.capacity)} "
            f"{found.format or 'image'}{on}): the domain is defined on it as it is, with its data "
            "(nothing is made from volume.from)"
        )
    return True


def _plan_growth(
    plan: PlanDraft, name: str, disk: Disk, pool: PoolView, found: VolumeObservation, *, running: bool
) -> str:
    """A volume in its pool: grown when smaller than its size (live when ``running``); returns why
    not when it is larger (a shrink would destroy data), else ""."""
    volume = disk.volume
    assert volume is not None and volume.size is not None
    field_name = f"disks[{disk.target}].volume.size"
    slack = LVM_EXTENT if pool.type == "logical" else 0
    capacity = -(-found.capacity // KIB) * KIB  # a manifest's sizes are whole KiB
    if capacity > volume.size + slack:
        return (
            f"shrinking {volume.key} {format_size(found.capacity)} → {format_size(volume.size)} would "
            "destroy data; volumes only grow"
        )
    if capacity < volume.size:
        grown = volume.size - found.capacity
        plan.actions.append(
            Action(
                ActionKind.RESIZE_VOLUME,
                plan.host,
                name,
                Phase.VOLUME_GROW,
                changes=(Change(field_name, format_size(found.capacity), format_size(volume.size)),),
                reason="live: the running guest sees the new size" if running else "",
                volume=VolumeChange(
                    volume.pool,
                    volume.name,
                    volume.size,
                    previous=found.capacity,
                    allocation=grown if _allocates_all(disk.format, pool) else 0,
                    format=disk.format,
                ),
            )
        )
    return ""


def _misfit(disk: Disk, pool: PoolView) -> str:
    """Why a volume cannot be made or kept in this pool as the disk says ("" when it can)."""
    if pool.type == "logical" and disk.format != "raw":
        return f"pool {pool.name!r} is an LVM pool, whose volumes are raw: the disk's format must be raw"
    return ""


def _allocates_all(fmt: str, pool: PoolView) -> bool:
    """Whether a volume takes its whole size from the pool at once: a raw LVM volume does; a qcow2
    image or a sparse raw file takes space as the guest writes."""
    return pool.type == "logical" and fmt == "raw"


def _plan_create(
    plan: PlanDraft,
    name: str,
    where: str,
    disk: Disk,
    pools: Mapping[str, PoolView],
    writers: Mapping[str, str],
) -> None:
    """A create-volume action, after checking its base image (a volume of the host's pools, no
    larger than the new volume, no domain's disk)."""
    field_name = f"disks[{disk.target}].volume.size"
    volume = disk.volume
    assert volume is not None and volume.size is not None
    pool = pools[volume.pool]
    source = volume.from_
    base = None
    if source is not None:
        base = base_volume(source.path, pools.values())
        writer = writers.get(posixpath.normpath(source.path))
        problem = _base_problem(volume, base, pools, plan.host) or _written_base(source.path, writer)
        if problem:
            plan.errors.append(f"{where}.from.path: {problem}")
            return
    clone = source is not None and source.mode == "clone"
    allocation = volume.size if clone or _allocates_all(disk.format, pool) else 0
    plan.actions.append(
        Action(
            ActionKind.CREATE_VOLUME,
            plan.host,
            name,
            Phase.CREATE_VOLUME,
            changes=(Change(field_name, None, format_size(volume.size)),),
            reason=_made_how(volume, disk.format),
            volume=VolumeChange(
                volume.pool,
                volume.name,
                volume.size,
                allocation=allocation,
                source=source.path if source is not None else "",
                mode=source.mode if source is not None else "",
                format=disk.format,
            ),
        )
    )


def base_volume(path: str, pools: Iterable[PoolView]) -> VolumeObservation | None:
    """The volume of the host's pools at ``path`` (None when no pool holds it)."""
    wanted = posixpath.normpath(path)
    for pool in pools:
        for volume in pool.volumes.values():
            if volume.path == wanted:
                return volume
    return None


def _base_problem(
    volume: Volume, base: VolumeObservation | None, pools: Mapping[str, PoolView], host: str
) -> str:
    """Why the volume cannot be made from its base image ("" when it can)."""
    assert volume.from_ is not None and volume.size is not None
    path = volume.from_.path
    if base is None:
        folder = posixpath.dirname(posixpath.normpath(path))
        if any(not pool.known and pool.target == folder for pool in pools.values()):
            return ""  # in a pool made or started by this plan: its volumes are listed once it runs
        return (
            f"{path} is not a volume of any storage pool on {host}: libvirt reads a base image's format "
            f"and size through a pool (add a Pool for {folder}, or put the image in a pool's folder)"
        )
    if base.capacity > volume.size:
        return (
            f"the base image {path} is {format_size(base.capacity)}, larger than the volume's size "
            f"{format_size(volume.size)}: a volume is at least as large as its base"
        )
    return ""


def _written_base(path: str, writer: str | None) -> str:
    """Why an image a domain's disk writes cannot be a base ("" when none does)."""
    if writer is None:
        return ""
    return (
        f"the base image {path} is a disk of domain {writer!r}, which writes to it: an overlay on it "
        "or a copy of it would be corrupt (use an image no domain's disk is)"
    )


def _made_how(volume: Volume, fmt: str) -> str:
    """How a new volume is made, in a few words (shown in plans)."""
    if volume.from_ is None:
        return f"empty {fmt}"
    if volume.from_.mode == "backing":
        return f"qcow2 overlay on {volume.from_.path}"
    return f"{fmt} copy of {volume.from_.path}"


def plan_volume_deletions(
    plan: PlanDraft, parsed: ParsedDomain, pools: Mapping[str, PoolView], keepers: Mapping[str, str]
) -> list[str]:
    """After a pruned domain's undefine, a delete-volume action for each of its volumes that its
    ownership says go with it; returns why any such volume is kept instead. ``keepers`` maps each
    image path still needed (:func:`volume_keepers`) to why."""
    owner = parsed.owner
    doomed = owner.volumes_to_delete() if owner is not None else frozenset()
    kept = []
    for disk in parsed.spec.disks:
        volume = disk.volume
        if volume is None or volume.key not in doomed:
            continue
        pool = pools.get(volume.pool)
        found = pool.volumes.get(volume.name) if pool is not None else None
        why = keepers.get(posixpath.normpath(found.path)) if found is not None else None
        if why is not None:
            kept.append(f"volume {volume.key} kept: {why}")
        elif found is not None:
            plan.actions.append(
                Action(
                    ActionKind.DELETE_VOLUME,
                    plan.host,
                    parsed.name,
                    Phase.DELETE_VOLUME,
                    changes=(Change(f"disks[{disk.target}].volume.size", format_size(found.capacity), None),),
                    reason="deleteVolumes: true",
                    volume=VolumeChange(volume.pool, volume.name, 0, previous=found.capacity),
                )
            )
    return kept


def disk_writers(domains: Iterable[tuple[str, DomainSpec]], pools: Mapping[str, PoolView]) -> dict[str, str]:
    """Each image the given domains' disks are (a path, or a volume's path in its pool), with the
    first domain using it: every disk is read-write."""
    users: dict[str, str] = {}
    for name, spec in domains:
        for disk in spec.disks:
            users.setdefault(posixpath.normpath(disk_identity(disk, pools)), name)
    return users


def volume_keepers(
    writers: Mapping[str, str],
    wanted: Mapping[str, Domain],
    pools: Mapping[str, PoolView],
    deleting: Iterable[str],
) -> dict[str, str]:
    """Each image path a deletion must spare, with why: a disk of a domain that stays or is wanted
    (``writers``), a manifest's ``from.path``, or the backing file of a volume that stays. The
    volumes this plan deletes (``deleting``, their paths) back nothing once gone, unless one of
    them is spared itself, which spares its backing file in turn."""
    keepers = {path: f"{user} uses it" for path, user in writers.items()}
    for name, domain in wanted.items():
        for disk in domain.spec.disks:
            source = disk.volume.from_ if disk.volume is not None else None
            if source is not None:
                keepers.setdefault(posixpath.normpath(source.path), f"{name} makes its volume from it")
    overlays = [
        (posixpath.normpath(v.path), posixpath.normpath(v.backing), f"{pool.name}/{v.name}")
        for pool in pools.values()
        for v in pool.volumes.values()
        if v.backing
    ]
    gone = set(deleting)
    changed = True
    while changed:  # a spared overlay spares its base: until nothing more is spared
        changed = False
        for path, backing, key in overlays:
            if backing not in keepers and (path not in gone or path in keepers):
                keepers[backing] = f"it is the backing file of volume {key}"
                changed = True
    return keepers


def plan_storage(
    plan: PlanDraft,
    wanted: Mapping[str, Domain],
    seen: Seen,
    pools: Mapping[str, PoolView],
    alone: Iterable[str] = (),
) -> None:
    """Every volume action of a host's plan: the volumes of each wanted domain this plan defines,
    moves in or keeps (none for a conflict, a held domain or one left alone), then the deletions
    after the undefines of pruned domains (a volume still needed is kept: :func:`volume_keepers`)."""
    skip = set(alone) | {c.domain for c in plan.conflicts} | {h.domain for h in plan.held}
    leaving = {a.domain for a in plan.actions if a.releases}
    staying = [(n, parsed.spec) for n, (_, parsed) in seen.items() if parsed and n not in leaving]
    writers = disk_writers([*((n, d.spec) for n, d in wanted.items()), *staying], pools)
    moving_in = {a.domain: a.peer for a in plan.actions if a.moves_in}
    for name, domain in wanted.items():
        found = seen.get(name)
        if name in skip or (found is not None and (found[1] is None or found[1].owner is None)):
            continue
        running, source = found is not None and found[0].active, moving_in.get(name, "")
        at = DomainAt(running=running, arriving=found is None, writers=writers, moved_from=source)
        plan_volumes(plan, domain, pools, at)
    undefined = [(a, seen[a.domain][1]) for a in plan.actions if a.kind is ActionKind.UNDEFINE]
    if not undefined:
        return
    deleting = [
        posixpath.normpath(pool.path_of(disk.volume.name))
        for _, parsed in undefined
        if parsed is not None and parsed.owner is not None
        for disk in parsed.spec.disks
        if disk.volume is not None
        and disk.volume.key in parsed.owner.volumes_to_delete()
        and (pool := pools.get(disk.volume.pool)) is not None
    ]
    keepers = volume_keepers(writers, wanted, pools, deleting)
    for action, parsed in undefined:
        kept = plan_volume_deletions(plan, parsed, pools, keepers) if parsed is not None else []
        if kept:
            index = plan.actions.index(action)
            plan.actions[index] = replace(action, reason=f"{action.reason}; {'; '.join(kept)}")
