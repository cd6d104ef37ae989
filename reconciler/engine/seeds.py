"""Cloud-init seeds: what a host's plan uploads, and deletes, in its storage pools (pure).

A domain with ``cloudInit`` has a seed volume ``<domain>-cidata.iso`` in a pool of its host, attached
as a read-only cdrom (the domain diff compares where it lives; see ``libvirtxml.consoles``). Its
content is compared here, by digest: the digest of the seed last uploaded is recorded in the domain's
ownership metadata (``seed``), never the files. A seed volume is the domain's own only when its
definition attaches it and its ownership records a digest (:func:`owned_seed_pool`); any other
volume of that name may be someone's data and is never written or deleted: an error of the plan
when the seed would go there (but for a domain this plan defines, one no disk uses is the seed an
interrupted apply left: written again, with a warning).

- A domain this plan defines (or moves in) gets its seed uploaded before it is defined (``reseed``
  in the create-volume phase, shown ``+ seed``); the definition records its digest.
- A managed domain whose seed changed (another digest), is new (``cloudInit`` added, or another
  pool), or whose seed volume its pool lacks, gets a ``reseed`` in the reseed phase: the new image
  is uploaded and its digest recorded. No redefine. Every seed volume is :data:`SEED_VOLUME_BYTES`
  large, which holds the largest seed, so a changed seed is written in place, into the file the
  running QEMU has open: a reboot from inside the guest reads it. Only a volume made (again) for a
  running domain (one gone from its pool, or an older one too small) is a new file that the running
  QEMU does not see: that reseed says a restart is needed. The upload is not atomic: a guest booting
  while it runs may read a mix of both seeds (cloud-init reads the seed while the guest boots).
- A seed no longer wanted is deleted: a pruned domain's after its undefine, and after the update
  that detaches it, the seed of a domain whose ``cloudInit`` is removed or moved to another pool, and
  the seed a move leaves on the host it leaves (after the move out, in the grow stage: a move that
  does not happen keeps it). Never a volume a disk of another domain (defined or wanted) uses, nor,
  on a pool other than ``dir``, the seed a running domain still holds open (kept, with a warning).

A plan shows the seed's digest (``cloudInit.seed: sha256:…``), never its files; the image travels in
the action (``Action.seed``), which no plan format, saved plan, snapshot or log writes out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from reconciler.engine.actions import Action, ActionKind, Phase, SeedUpload, VolumeChange
from reconciler.engine.diff import Change
from reconciler.engine.domainplan import PlanDraft
from reconciler.engine.pruning import Seen
from reconciler.engine.seediso import build_seed_iso
from reconciler.engine.volumes import PoolView, disk_identity
from reconciler.libvirtxml.parse import ParsedDomain
from reconciler.spec.cloudinit import Seed, seed_volume_name
from reconciler.spec.models import Domain

#: The field a seed's changes are shown under.
SEED_FIELD = "cloudInit.seed"
#: The size a seed volume is made at: the largest seed the file limits allow (three files of 256 KiB
#: make an 830 KiB image) fits, so a seed is never made again larger while its domain runs.
SEED_VOLUME_BYTES = 1024**2


def shown(digest: str) -> str | None:
    """A seed digest as plans show it (``sha256:…``); None for no seed."""
    return f"sha256:{digest}" if digest else None


def owned_seed_pool(parsed: ParsedDomain | None) -> str:
    """The pool whose ``<name>-cidata.iso`` is this observed domain's own seed: its definition attaches
    it and its ownership records the digest of a seed uploaded for it; "" when none is."""
    if parsed is None or parsed.owner is None or not parsed.owner.seed or parsed.spec.cloud_init is None:
        return ""
    return parsed.spec.cloud_init.pool or ""


def disk_users(wanted: Mapping[str, Domain], seen: Seen, pools: Mapping[str, PoolView]) -> dict[str, str]:
    """Which domain uses each disk image of the host (by ``disk_identity``): the disks of the domains
    observed there and of those the manifests want there. Seeds are no disks."""
    users: dict[str, str] = {}
    for name, (_live, parsed) in seen.items():
        for disk in parsed.spec.disks if parsed is not None else ():
            users.setdefault(disk_identity(disk, pools), name)
    for name, domain in wanted.items():
        for disk in domain.spec.disks:
            users.setdefault(disk_identity(disk, pools), name)
    return users


@dataclass(frozen=True)
class _Host:
    """What every seed decision of one host's plan reads: the plan, its pools, who uses each disk."""

    plan: PlanDraft
    pools: Mapping[str, PoolView]
    users: Mapping[str, str]


def plan_seeds(
    plan: PlanDraft,
    wanted: Mapping[str, Domain],
    seeds: Mapping[str, Seed],
    seen: Seen,
    pools: Mapping[str, PoolView],
    alone: Iterable[str] = (),
) -> None:
    """Every seed action of a host's plan: an upload for each wanted domain whose seed is new or
    changed, then the deletion of each seed no longer wanted (none for a conflict, a held domain or
    one left alone)."""
    skip = set(alone) | {c.domain for c in plan.conflicts} | {h.domain for h in plan.held}
    arriving = {a.domain for a in plan.actions if a.kind is ActionKind.DEFINE or a.moves_in}
    host = _Host(plan, pools, disk_users(wanted, seen, pools))
    for name, domain in wanted.items():
        if domain.spec.cloud_init is None or name in skip:
            continue
        found = seen.get(name)
        new = name in arriving
        if not new and (found is None or found[1] is None or found[1].owner is None):
            continue  # not ours (a conflict), or absent and not defined here (held)
        seed = seeds.get(name)
        if seed is None:
            plan.errors.append(f"domain {name!r}: its cloud-init seed files were not loaded")
            continue
        parsed = found[1] if found is not None and not new else None
        recorded = parsed.owner.seed if parsed is not None and parsed.owner is not None else ""
        owns = owned_seed_pool(parsed) == seed.pool
        running = found is not None and found[0].active
        _plan_upload(host, seed, recorded=recorded, owns=owns, new=new, running=running)
    _plan_seed_deletions(host, wanted, seen, skip)


def _plan_upload(host: _Host, seed: Seed, *, recorded: str, owns: bool, new: bool, running: bool) -> None:
    """A reseed when the seed is new, changed, or missing from its pool; an error when a volume of
    its name is there that is not the domain's own seed."""
    plan, name = host.plan, seed.domain
    pool = host.pools.get(seed.pool)
    if pool is None:
        plan.errors.append(
            f"domain {name!r}: spec.cloudInit.pool: pool {seed.pool!r} does not exist on {plan.host}, "
            "and no Pool manifest makes it"
        )
        return
    found = pool.volumes.get(seed.volume)  # (a pool not running yet lists none: the adapter checks)
    if found is not None and _not_ours(host, name, pool, seed.volume, owns=owns, new=new):
        return
    if owns and recorded == seed.digest and found is not None:
        return
    image = build_seed_iso(seed)
    previous = found.capacity if found is not None else 0
    made = found is None or found.capacity < len(image)  # made, or made again larger (adapter)
    capacity = max(SEED_VOLUME_BYTES, len(image)) if made else previous
    restart = running and made
    if new:
        reason = f"uploaded to pool {seed.pool} before the domain is defined"
    elif restart:
        reason = "a new volume: the running guest reads it after a restart from the host"
    else:
        reason = "read at the next boot" + (" (a reboot inside the guest too)" if running else "")
    plan.actions.append(
        Action(
            ActionKind.RESEED,
            plan.host,
            name,
            Phase.CREATE_VOLUME if new else Phase.RESEED,
            changes=(Change(SEED_FIELD, shown(recorded), shown(seed.digest)),),
            restart=restart,
            reason=reason,
            volume=VolumeChange(
                seed.pool,
                seed.volume,
                capacity,
                previous=previous,
                allocation=capacity - previous if made else 0,
                format="raw",
            ),
            seed=SeedUpload(seed.digest, image),
        )
    )


def _not_ours(host: _Host, name: str, pool: PoolView, volume: str, *, owns: bool, new: bool) -> bool:
    """Whether the existing volume ``volume`` cannot take ``name``'s seed (an error of the plan then):
    a disk of a domain uses it, or the domain's ownership does not record it as its seed. For a domain
    this plan defines, a volume no disk uses is taken as the seed an apply interrupted before the
    define left behind (a warning): the adapter writes only over a cidata ISO or zeros."""
    where = f"domain {name!r}: spec.cloudInit: volume {pool.name}/{volume}"
    user = host.users.get(pool.path_of(volume))
    if user is not None:
        host.plan.errors.append(f"{where} is a disk of domain {user!r}: a seed upload would overwrite it")
        return True
    if owns:
        return False
    if new:
        host.plan.warnings.append(
            f"{where} exists and no disk uses it: taken as the seed an apply that stopped before the "
            "define left behind, and written again (only over a cloud-init seed or zeros)"
        )
        return False
    host.plan.errors.append(
        f"{where} exists and is not a seed the domain's ownership records: it may hold another's data "
        f"and is never overwritten; rename or delete it (virsh vol-delete --pool {pool.name} {volume})"
    )
    return True


def _plan_seed_deletions(host: _Host, wanted: Mapping[str, Domain], seen: Seen, skip: set[str]) -> None:
    """The deletion of each seed volume no longer wanted: after the undefine of a pruned domain, after
    a move out, after the update that detaches it (``cloudInit`` removed or in another pool)."""
    plan = host.plan
    released = {a.domain: a for a in plan.actions if a.releases}
    updated = {a.domain for a in plan.actions if a.kind is ActionKind.UPDATE and a.xml is not None}
    for name, (live, parsed) in seen.items():
        pool_name = owned_seed_pool(parsed)
        if not pool_name or name in skip or parsed is None:
            continue
        gone = released.get(name)
        if gone is not None and gone.kind is ActionKind.UNDEFINE:
            phase, reason = Phase.DELETE_VOLUME, "its cloud-init seed, derived from the manifests"
        elif gone is not None:  # a move out: deleted in the grow stage, which a move not done never reaches
            phase, reason = Phase.RESEED, f"its cloud-init seed, left behind by the move to {gone.peer}"
        elif name in updated and _seed_pool(wanted.get(name)) != pool_name:
            phase, reason = Phase.RESEED, "its cloud-init seed, detached by the update"
            pool = host.pools.get(pool_name)
            if live.active and pool is not None and pool.type != "dir":  # an open LV cannot be removed
                plan.warnings.append(
                    f"domain {name!r}: its old seed volume {pool_name}/{seed_volume_name(name)} is kept: "
                    f"the running domain holds it open until its restart; delete it after that"
                )
                continue
        else:
            continue
        _delete_seed(host, parsed, pool_name, phase, reason)


def _seed_pool(domain: Domain | None) -> str:
    """The pool a wanted domain's seed goes to ("" without ``cloudInit``)."""
    cloud_init = domain.spec.cloud_init if domain is not None else None
    return (cloud_init.pool or "") if cloud_init is not None else ""


def _delete_seed(host: _Host, parsed: ParsedDomain, pool_name: str, phase: Phase, reason: str) -> None:
    """A domain's seed volume deleted, when its pool has it and no disk of another domain uses it."""
    plan, volume = host.plan, seed_volume_name(parsed.name)
    pool = host.pools.get(pool_name)
    found = pool.volumes.get(volume) if pool is not None else None
    if pool is None or found is None:
        return
    user = host.users.get(pool.path_of(volume))
    if user is not None:
        plan.warnings.append(
            f"domain {parsed.name!r}: volume {pool_name}/{volume} is kept: it is a disk of domain {user!r}"
        )
        return
    recorded = parsed.owner.seed if parsed.owner is not None else ""
    plan.actions.append(
        Action(
            ActionKind.DELETE_VOLUME,
            plan.host,
            parsed.name,
            phase,
            changes=(Change(SEED_FIELD, shown(recorded), None),),
            reason=reason,
            volume=VolumeChange(pool_name, volume, 0, previous=found.capacity, format="raw"),
        )
    )
