"""Cloud-init seeds: what a host's plan uploads, and deletes, in its storage pools (pure).

A domain with ``cloudInit`` has a seed volume ``<domain>-cidata.iso`` in a pool of its host, attached
as a read-only cdrom (the domain diff compares where it lives; see ``libvirtxml.consoles``). Its
content is compared here, by digest: the digest of the seed last uploaded is recorded in the domain's
ownership metadata (``seed``), never the files.

- A domain this plan defines (or moves in) gets its seed uploaded before it is defined
  (``reseed`` in the create-volume phase); the definition records its digest.
- A managed domain whose seed changed (another digest), or whose seed volume its pool lacks, gets
  a ``reseed`` in the reseed phase: the new image is uploaded and its digest recorded. No redefine,
  no restart: cloud-init reads the seed at the next boot. The domain is not marked waiting for a
  restart either: a reboot from inside the guest reads it as well, and cloud-init runs most of
  user-data only on an instance's first boot anyway (a new ``instance-id`` in meta-data makes it
  run again).
- A pruned domain's seed volume is deleted after its undefine: it is derived from the manifests,
  nobody's data (a move leaves it on the host it leaves, like every volume).

A plan shows the seed's digest (``cloudInit.seed: sha256:…``), never its files; the image travels in
the action (``Action.seed``), which no plan format, saved plan, snapshot or log writes out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from reconciler.engine.actions import Action, ActionKind, Phase, SeedUpload, VolumeChange
from reconciler.engine.diff import Change
from reconciler.engine.domainplan import PlanDraft
from reconciler.engine.pruning import Seen
from reconciler.engine.seediso import build_seed_iso
from reconciler.engine.volumes import PoolView
from reconciler.spec.cloudinit import Seed, seed_volume_name
from reconciler.spec.models import Domain

#: The field a seed's changes are shown under.
SEED_FIELD = "cloudInit.seed"


def shown(digest: str) -> str | None:
    """A seed digest as plans show it (``sha256:…``); None for no seed."""
    return f"sha256:{digest}" if digest else None


def plan_seeds(
    plan: PlanDraft,
    wanted: Mapping[str, Domain],
    seeds: Mapping[str, Seed],
    seen: Seen,
    pools: Mapping[str, PoolView],
    alone: Iterable[str] = (),
) -> None:
    """Every seed action of a host's plan: an upload for each wanted domain whose seed is new or
    changed, then the deletion of each pruned domain's seed (none for a conflict, a held domain or
    one left alone)."""
    skip = set(alone) | {c.domain for c in plan.conflicts} | {h.domain for h in plan.held}
    arriving = {a.domain for a in plan.actions if a.kind is ActionKind.DEFINE or a.moves_in}
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
        parsed = found[1] if found is not None else None
        recorded = parsed.owner.seed if not new and parsed is not None and parsed.owner is not None else ""
        running = found is not None and found[0].active
        _plan_upload(plan, seed, pools, recorded=recorded, new=new, running=running)
    _plan_seed_deletions(plan, seen, pools)


def _plan_upload(
    plan: PlanDraft, seed: Seed, pools: Mapping[str, PoolView], *, recorded: str, new: bool, running: bool
) -> None:
    """A reseed when the seed is new, changed, or missing from its pool."""
    name = seed.domain
    pool = pools.get(seed.pool)
    if pool is None:
        plan.errors.append(
            f"domain {name!r}: spec.cloudInit.pool: pool {seed.pool!r} does not exist on {plan.host}, "
            "and no Pool manifest makes it"
        )
        return
    found = pool.volumes.get(seed.volume)  # (a pool not running yet lists none: uploaded to be sure)
    if not new and recorded == seed.digest and found is not None:
        return
    image = build_seed_iso(seed)
    previous = found.capacity if found is not None else 0
    if new:
        reason = f"uploaded to pool {seed.pool} before the domain is defined"
    else:
        reason = "read at the next boot; no restart forced" if running else "read at the next boot"
    plan.actions.append(
        Action(
            ActionKind.RESEED,
            plan.host,
            name,
            Phase.CREATE_VOLUME if new else Phase.RESEED,
            changes=(Change(SEED_FIELD, shown(recorded), shown(seed.digest)),),
            reason=reason,
            volume=VolumeChange(
                seed.pool,
                seed.volume,
                len(image),
                previous=previous,
                allocation=max(0, len(image) - previous),
                format="raw",
            ),
            seed=SeedUpload(seed.digest, image),
        )
    )


def _plan_seed_deletions(plan: PlanDraft, seen: Seen, pools: Mapping[str, PoolView]) -> None:
    """After each undefine of a domain with a seed cdrom, the deletion of its seed volume."""
    for action in [a for a in plan.actions if a.kind is ActionKind.UNDEFINE]:
        parsed = seen[action.domain][1] if action.domain in seen else None
        cloud_init = parsed.spec.cloud_init if parsed is not None else None
        if parsed is None or cloud_init is None or cloud_init.pool is None:
            continue
        volume = seed_volume_name(parsed.name)
        pool = pools.get(cloud_init.pool)
        found = pool.volumes.get(volume) if pool is not None else None
        if found is None:
            continue
        plan.actions.append(
            Action(
                ActionKind.DELETE_VOLUME,
                plan.host,
                parsed.name,
                Phase.DELETE_VOLUME,
                changes=(Change(SEED_FIELD, shown(parsed.owner.seed if parsed.owner else ""), None),),
                reason="its cloud-init seed, derived from the manifests",
                volume=VolumeChange(cloud_init.pool, volume, 0, previous=found.capacity, format="raw"),
            )
        )
