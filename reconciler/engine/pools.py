"""The storage pools a host must have: one ``pool`` action per Pool manifest the host does not
satisfy yet (pure).

A pool carries no ownership mark (libvirt's pool XML has no metadata element), so virt-reconcile
only ever *ensures* pools, and never undefines, deletes, rebuilds or redefines one:

* a pool the host lacks is defined from the manifest, built only when its folder or volume group
  is missing (libvirt's ``NO_OVERWRITE``: a device holding data is never formatted), started and
  given its autostart flag;
* a pool of the same name whose type and target agree with the manifest is adopted: started when
  inactive, its autostart flag set; nothing else of its definition is touched;
* a pool of the same name whose type or target differ is a conflict: an error that blocks the
  host (nothing is applied there), since the volumes the manifests want would land elsewhere;
* a pool no manifest names is left alone, whatever it holds (its volumes still count in the
  storage rules of :mod:`reconciler.engine.policy` only for pools the manifests name).

A ``pool`` action's ``domain`` field holds the pool's name; its ``xml`` is the definition for a
pool the host lacks (None for an adopted one) and ``autostart`` the flag to set (None: keep).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from reconciler.engine.actions import Action, ActionKind, Phase
from reconciler.engine.diff import Change
from reconciler.engine.hypervisor import PoolObservation
from reconciler.libvirtxml.pools import render_pool
from reconciler.spec.storage import Pool

#: What a pool's definition step does, shown as the action's reason.
DEFINE_STEPS = "define, build only when its {place} is missing and never over data, start"


@dataclass(frozen=True)
class PoolPlan:
    """The pool actions of one host, and the pools that conflict with the manifests (errors)."""

    actions: tuple[Action, ...] = ()
    errors: tuple[str, ...] = ()


def plan_pools(host: str, desired: Mapping[str, Pool], observed: Sequence[PoolObservation]) -> PoolPlan:
    """Ensure each desired pool on ``host``: define what is missing, start and autostart what is
    adopted, and report a pool of the same name but another type or target as a conflict."""
    seen = {pool.name: pool for pool in observed}
    actions: list[Action] = []
    errors: list[str] = []
    for name, pool in desired.items():
        found = seen.get(name)
        if found is None:
            actions.append(_define(host, pool))
            continue
        conflict = _conflict(pool, found)
        if conflict:
            errors.append(conflict)
            continue
        action = _adopt(host, pool, found)
        if action is not None:
            actions.append(action)
    return PoolPlan(tuple(actions), tuple(errors))


def _define(host: str, pool: Pool) -> Action:
    """A pool the host lacks: defined, built when needed, started, autostarted as the manifest says."""
    spec = pool.spec
    changes = [Change("type", None, spec.type), Change("path", None, pool.target)]
    if spec.devices:
        changes.append(Change("devices", None, list(spec.devices)))
    changes.append(Change("active", False, True))
    if spec.autostart:
        changes.append(Change("autostart", False, True))
    place = "folder" if spec.type == "dir" else "volume group"
    return Action(
        ActionKind.POOL,
        host,
        pool.name,
        Phase.POOL,
        changes=tuple(changes),
        reason=DEFINE_STEPS.format(place=place),
        xml=render_pool(pool),
        autostart=spec.autostart,
    )


def _conflict(pool: Pool, found: PoolObservation) -> str:
    """Why an existing pool cannot be the manifest's (another type or target), or ""."""
    if found.type == pool.spec.type and found.target == pool.target:
        return ""
    return (
        f"pool {pool.name!r} exists as a {found.type or 'unknown'} pool at {found.target or '(no target)'}, "
        f"the manifest wants a {pool.spec.type} pool at {pool.target}: a conflict, never redefined"
    )


def _adopt(host: str, pool: Pool, found: PoolObservation) -> Action | None:
    """An existing pool that matches: started when inactive, autostart set; None when it is as wanted."""
    changes = []
    if not found.active:
        changes.append(Change("active", False, True))
    autostart = None
    if found.autostart != pool.spec.autostart:
        autostart = pool.spec.autostart
        changes.append(Change("autostart", found.autostart, autostart))
    if not changes:
        return None
    return Action(ActionKind.POOL, host, pool.name, Phase.POOL, changes=tuple(changes), autostart=autostart)


def pools_made(actions: Iterable[Action]) -> set[str]:
    """The pools a plan defines (they have no capacity to check yet)."""
    return {action.domain for action in actions if action.kind is ActionKind.POOL and action.xml is not None}
