"""Checks that a volume names a storage pool its domain's host has (pure): a disk's ``volume.pool``
must be the name of a Pool document of the same host, or the volume would have nowhere to go."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from reconciler.errors import Problem
from reconciler.spec.crosschecks import Placed
from reconciler.spec.models import Domain
from reconciler.spec.storage import Pool

#: Pool documents per host, by name (``ManifestSet.pools``).
Pools = Mapping[str, Mapping[str, Pool]]


def pool_problem(pools: Pools, host: str, pool: str) -> str | None:
    """Why ``pool`` cannot be used on ``host`` (no Pool of that name there), or None."""
    known = pools.get(host, {})
    if pool in known:
        return None
    where = ", ".join(sorted(known)) or "none"
    return f"unknown pool {pool!r} on host {host!r} (its pools: {where}): a volume needs a Pool document"


def unknown_pools(pools: Pools, domains: Iterable[tuple[str, Domain, Placed]]) -> list[Problem]:
    """A problem at ``spec.disks[i].volume.pool`` for each volume whose pool its host lacks."""
    problems = []
    for host, domain, placed in domains:
        for index, disk in enumerate(domain.spec.disks):
            problem = pool_problem(pools, host, disk.volume.pool) if disk.volume is not None else None
            if problem is not None:
                line = placed.line_of(("spec", "disks", index, "volume", "pool"))
                problems.append(Problem(placed.file, line, f"spec.disks[{index}].volume.pool", problem))
    return problems
