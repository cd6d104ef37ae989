"""Managed domains the manifests no longer name: which are kept, which go, and why (pure).

A domain is undefined only when everything agrees: deleting is allowed, the plan loaded the whole
manifest root that owns the domain (not one file of it, not another root), the domain was defined
through this Host entry, it is not protected, and it is not an import still waiting for its first
apply. A domain the manifests now want on another host is a move, not an orphan. Too many undefines
on one host at once is refused as a whole: an emptied branch must not empty a hypervisor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reconciler.engine.actions import Action, ActionKind, Orphan, Phase
from reconciler.engine.domainplan import PlanDraft
from reconciler.engine.hypervisor import DomainObservation
from reconciler.engine.ownership import Relation, relation
from reconciler.libvirtxml.parse import ParsedDomain
from reconciler.spec.models import Domain, Owner

if TYPE_CHECKING:
    from reconciler.engine.fleet import Fleet

#: Every observed domain by name, with its parse (None: unreadable XML).
Seen = dict[str, tuple[DomainObservation, ParsedDomain | None]]


@dataclass(frozen=True)
class DeletionRules:
    """When a managed domain missing from the manifests may be undefined, and how many at once.

    Pruning needs the deletion allowed (``prune: true`` or ``--allow-delete``) *and* the manifests
    loaded to be the whole manifest root that owns the domain: a plan of one file, or of another
    root, never undefines. Deletion protection and an import's pending mark always keep a domain.
    More than ``max_deletions`` undefines on a host, or more than half of its managed domains, is
    refused unless ``allow_mass``.
    """

    allow: bool = False
    whole_tree: bool = True  # the plan loaded a folder (a manifest root), not a single file
    root: str = ""  # identity of that root, recorded in the ownership of what it defines ("" unknown)
    max_deletions: int = 5
    allow_mass: bool = False
    now: str = ""  # ISO 8601 UTC: when an import's pending mark lapses is compared with it


def keep_reason(owner: Owner, host: str, rules: DeletionRules) -> str:
    """Why a managed domain missing from the manifests stays ("" when it may be undefined)."""
    if owner.deletion_protection:
        return "deletionProtection: true"
    if owner.pending_at(rules.now):
        until = f" (or until {owner.pending_until})" if owner.pending_until else ""
        return f"adopted (imported or restored), kept until a revision that holds it is applied{until}"
    if not rules.whole_tree:
        return "this plan loaded part of the manifest tree (a file): it never undefines"
    match relation(owner.root, rules.root) if rules.root else Relation.SAME:
        case Relation.UNRECORDED:
            return (
                "its ownership (from an older version) names no manifest root, so no plan can prove "
                "it is the owner: undefine it by hand if it should go"
            )
        case Relation.PART:
            return f"this plan loaded part of the manifest tree that defined it ({owner.root})"
        case Relation.OTHER:
            return f"owned by another manifest root ({owner.root}); this plan loaded {rules.root}"
    if owner.host and owner.host != host:
        return f"defined through Host entry {owner.host!r}, not {host!r}"
    if not rules.allow:
        return "prune is off (--allow-delete or the host's prune: true removes it)"
    return ""


def plan_orphans(
    plan: PlanDraft, seen: Seen, wanted: Mapping[str, Domain], rules: DeletionRules, fleet: Fleet | None
) -> None:
    """Every managed domain not wanted here: moved out, undefined, or kept with the reason."""
    for name, (live, parsed) in seen.items():
        if name in wanted or parsed is None or parsed.owner is None:
            continue
        ours = parsed.owner.host in ("", plan.host) and relation(parsed.owner.root, rules.root) in (
            Relation.SAME,
            Relation.UNRECORDED,
        )
        reason = _move_out(plan, name, live, fleet) if ours or not rules.root else ""
        if reason is None:
            continue  # moved out: not an orphan
        reason = reason or keep_reason(parsed.owner, plan.host, rules)
        plan.orphans.append(Orphan(plan.host, name, running=live.active, delete=not reason, reason=reason))
        if not reason:
            plan.actions.append(
                Action(
                    ActionKind.UNDEFINE,
                    plan.host,
                    name,
                    Phase.UNDEFINE,
                    reason="managed but no longer in git",
                    stop_first=live.active,
                )
            )


def _move_out(plan: PlanDraft, name: str, live: DomainObservation, fleet: Fleet | None) -> str | None:
    """The source half of a move (None when planned), why it waits, or "" when it is no move."""
    if fleet is None:
        return ""
    target = fleet.target_of(name, plan.host)
    if target is None:
        return fleet.blocker(name, plan.host) or ""
    if target not in fleet.selected:
        return f"in git for {target} now: it moves when {target} is in the run too (--host {target})"
    if name in fleet.held:
        return fleet.held[name]
    plan.actions.append(
        Action(
            ActionKind.MOVE,
            plan.host,
            name,
            Phase.UNDEFINE,
            reason=f"to {target}",
            stop_first=live.active,
            peer=target,
        )
    )
    return None


def check_mass_deletion(plan: PlanDraft, seen: Seen, rules: DeletionRules) -> None:
    """Refuse the host's plan when it would undefine too many domains at once (a moved domain is not
    deleted and does not count)."""
    undefines = sum(1 for action in plan.actions if action.kind is ActionKind.UNDEFINE)
    if undefines == 0 or rules.allow_mass:
        return
    managed = sum(1 for _, parsed in seen.values() if parsed is not None and parsed.owner is not None)
    if undefines > rules.max_deletions:
        why = f"more than maxDeletions ({rules.max_deletions})"
    elif 2 * undefines > managed:
        why = f"more than half of its {managed} managed domains"
    else:
        return
    plan.errors.append(
        f"would undefine {undefines} domains, {why}: refused, nothing is applied on {plan.host} "
        "(--allow-mass-delete to go ahead)"
    )
