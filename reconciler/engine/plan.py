"""Plans as plain data, and ``build_host_plan``: desired domains vs one observed host (pure).

A plan is, per host, an ordered list of actions from a closed set (docs/design.md §3), plus what the plan
will not touch and why: orphans (managed, gone from git), conflicts (same name, not ours) and
errors (managed domains whose XML cannot be read). Actions are ordered so a host shrinks before
it grows: no intermediate state uses more than the larger of before and after.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from reconciler.engine.actions import Action, ActionKind, Conflict, Held, Orphan
from reconciler.engine.domainplan import PlanDraft, plan_change, plan_define, plan_restarts
from reconciler.engine.hypervisor import DomainObservation, HostEnvironment, HostObservation, SpaceFact
from reconciler.engine.ownership import Relation, RevisionCheck, commit_of, relation
from reconciler.engine.policy import HostPolicy, PolicyReport, estimated_pools
from reconciler.engine.pools import plan_pools
from reconciler.engine.preflight import Preflight, preflight
from reconciler.engine.pruning import DeletionRules, Seen, check_mass_deletion, plan_orphans
from reconciler.engine.seeds import plan_seeds
from reconciler.engine.usage import Usage
from reconciler.engine.volumes import PoolView, disk_identity, plan_storage, pools_in_view
from reconciler.errors import DomainXMLError, HostError
from reconciler.libvirtxml.ownership import OWNER_NS
from reconciler.libvirtxml.parse import ParsedDomain, parse_domain, read_usage
from reconciler.spec.annotations import SUSPEND
from reconciler.spec.cloudinit import Seed
from reconciler.spec.models import Domain, Owner
from reconciler.spec.storage import Pool

if TYPE_CHECKING:
    from reconciler.engine.fleet import Fleet


@dataclass(frozen=True)
class HostPlan:
    """What the plan will do on one host, what it refuses to touch, and the policy's verdict.

    Built once, complete, by :func:`build_host_plan` (or :meth:`failed` for a host that could not be
    planned); nothing fills it in afterwards.
    """

    host: str
    uri: str
    actions: tuple[Action, ...] = ()
    orphans: tuple[Orphan, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
    errors: tuple[str, ...] = ()
    held: tuple[Held, ...] = ()  # wanted here, not touched yet (a move that cannot be done safely now)
    warnings: tuple[str, ...] = ()  # pre-flight findings that do not block (a domain left as it is)
    unchecked: tuple[str, ...] = ()  # what the pre-flight could not check on this host, and why
    before: Mapping[str, Usage] = field(default_factory=dict)  # every domain's claim, as observed
    policy: PolicyReport | None = None
    observed: HostObservation | None = None  # what the plan was made from (snapshots, saved plans)
    host_error: HostError | None = None  # the host could not be reached or failed: retryable or not
    pending_restarts: tuple[str, ...] = ()  # running domains whose definition waits for a restart
    restart_waits: Mapping[str, str] = field(default_factory=dict)  # each one's "vcpus 2 → 1; ..."
    suspended: tuple[str, ...] = ()  # managed domains left alone: a suspend annotation (theirs or the host's)
    deferred: str = ""  # why this plan's actions wait (outside the host's sync windows); "" when they do not
    host_suspended: bool = False  # the host's own suspend annotation: nothing is done on it
    #: Ownership records an apply rewrites without a redefine, by domain (rerunOnFailure's
    #: off-on-purpose record): bookkeeping, not a change; written even when the host is blocked.
    metadata_writes: Mapping[str, Owner] = field(default_factory=dict)

    @classmethod
    def failed(cls, host: str, uri: str, error: HostError) -> HostPlan:
        """The plan of a host that could not be observed or planned: one error, nothing to do."""
        return cls(host=host, uri=uri, errors=(str(error),), host_error=error)

    @property
    def refused(self) -> bool:
        """Whether the overcommit policy refuses this host's plan."""
        return self.policy is not None and self.policy.refused

    @property
    def blocked(self) -> bool:
        """Nothing is applied on a host with a conflict, an unreadable managed domain or a refusal,
        nor on one that is suspended or outside its sync windows (:attr:`paused_because`)."""
        return bool(self.conflicts or self.errors) or self.refused or bool(self.paused_because)

    @property
    def paused_because(self) -> str:
        """Why nothing is applied on this host though nothing is wrong: its suspend annotation, or
        its sync windows (the deferral); "" when neither holds."""
        if self.host_suspended:
            return f'the host is suspended ({SUSPEND}: "true")'
        return self.deferred


@dataclass
class Plan:
    """Per host plans, in manifest order."""

    revision: str = ""
    hosts: dict[str, HostPlan] = field(default_factory=dict)

    @property
    def actions(self) -> list[Action]:
        """Every action of every host, in apply order per host."""
        return [action for host in self.hosts.values() for action in host.actions]

    @property
    def has_changes(self) -> bool:
        """Whether applying would change anything."""
        return bool(self.actions)

    @property
    def has_errors(self) -> bool:
        """Whether any host has a conflict or an error, or holds a domain back (a move not done)."""
        return any(host.conflicts or host.errors or host.held for host in self.hosts.values())

    @property
    def refused(self) -> bool:
        """Whether the overcommit policy refuses the plan of any host."""
        return any(host.refused for host in self.hosts.values())


@dataclass(frozen=True)
class DesiredHost:
    """What the manifests want on one host: its domains, the ownership mark each will carry, the
    rules for undefining managed domains missing from git, and the overcommit policy to keep."""

    name: str
    uri: str
    domains: Mapping[str, Domain]
    owner_of: Callable[[str], Owner]
    deletion: DeletionRules = field(default_factory=DeletionRules)
    policy: HostPolicy | None = None
    restart_pending: bool = False  # restart the running domains whose definition waits for it
    suspended: frozenset[str] = frozenset()  # domains a suspend annotation leaves alone (any host's)
    host_suspended: bool = False  # the host's suspend annotation: every domain on it is left alone
    deferred: str = ""  # why changes wait now (the host's sync windows); "" when they may be applied
    pools: Mapping[str, Pool] = field(default_factory=dict)  # the storage pools it must have (engine.pools)
    seeds: Mapping[str, Seed] = field(default_factory=dict)  # each cloudInit domain's seed (engine.seeds)
    revisions: RevisionCheck | None = None  # hold domains a newer revision wrote (None: no check)


def build_host_plan(
    desired: DesiredHost,
    observed: HostObservation,
    fleet: Fleet | None = None,
    environment: Callable[[Sequence[Domain]], HostEnvironment] | None = None,
) -> HostPlan:
    """Plan one host: define what is missing, change what differs, report orphans and conflicts.

    With a ``fleet`` (what the other hosts hold), a domain whose host changed becomes a move, and a
    domain that may still run on a host that could not be observed is held. With the host's
    ``environment`` (asked once the actions are known, only when there are some, about the domains
    the plan acts on), those domains are checked before anything runs (a missing
    network, bridge or file blocks the host; the same about an untouched domain is a warning).
    With ``desired.policy``, the plan carries the policy's verdict on its actions.
    """
    plan = PlanDraft(host=desired.name, uri=desired.uri)
    seen = _read_observed(plan, observed)
    suspended = _left_alone(desired, seen)
    alone = suspended | _written_later(plan, desired, seen, suspended, fleet)  # both untouched by this plan
    for name, domain in desired.domains.items():
        if name not in alone:
            _plan_domain(plan, domain, desired, seen.get(name), fleet)
    unsuspended = {name: found for name, found in seen.items() if name not in alone}
    plan_orphans(plan, unsuspended, desired.domains, desired.deletion, fleet)
    storage = pools_in_view(observed, desired.pools)
    plan_storage(plan, desired.domains, seen, storage, alone)  # volumes created, grown, deleted
    plan_seeds(plan, desired.domains, desired.seeds, seen, storage, alone)  # cloud-init seeds uploaded
    active = {name: domain for name, domain in desired.domains.items() if name not in alone}
    _check_disks_in_use(plan, replace(desired, domains=active) if alone else desired, seen, fleet, storage)
    check_mass_deletion(plan, seen, desired.deletion)
    if desired.restart_pending:
        plan_restarts(plan)
    pools = plan_pools(desired.name, desired.pools, observed.pools)
    plan.actions.extend(pools.actions)
    plan.errors.extend(pools.errors)
    checked, space = _preflight(plan, desired.domains, environment)
    plan.actions.sort(key=lambda action: action.phase)
    policy = desired.policy
    estimates = estimated_pools(desired.pools, observed.pools, space)  # pools that do not run yet
    verdict = policy.judge(observed, plan.before, plan.actions, estimates) if policy is not None else None
    return HostPlan(
        host=desired.name,
        uri=desired.uri,
        actions=tuple(plan.actions),
        orphans=tuple(plan.orphans),
        conflicts=tuple(plan.conflicts),
        errors=tuple(plan.errors),
        held=tuple(plan.held),
        warnings=(*plan.warnings, *checked.warnings),
        unchecked=checked.unchecked + (verdict.unchecked if verdict is not None else ()),
        before=plan.before,
        policy=verdict,
        observed=observed,
        suspended=tuple(sorted(suspended)),
        host_suspended=desired.host_suspended,
        deferred=desired.deferred,
        pending_restarts=() if desired.restart_pending else tuple(plan.waiting),
        restart_waits={} if desired.restart_pending else plan.waiting,
        metadata_writes=plan.metadata_writes,
    )


def _left_alone(desired: DesiredHost, seen: Seen) -> set[str]:
    """The domains a suspend annotation leaves alone here: every wanted or managed one on a suspended
    host, else those suspended that are wanted here or managed here (a move's source half)."""
    managed = {name for name, (live, _) in seen.items() if carries_owner(live.xml)}
    if desired.host_suspended:
        return set(desired.domains) | managed
    return {name for name in desired.suspended if name in desired.domains or name in managed}


def _written_later(
    plan: PlanDraft, desired: DesiredHost, seen: Seen, suspended: set[str], fleet: Fleet | None
) -> set[str]:
    """The managed domains a revision this run does not contain wrote (a newer commit, another
    branch) and this plan would act on: each held with the reason, neither changed nor pruned, so a
    stale run (a daemon not yet fetched, an old checkout) never undoes what a newer one did. Not
    those of another root, nor those this run would leave as they are (it undoes nothing there)."""
    check, root = desired.revisions, desired.deletion.root
    if check is None:
        return set()
    held: set[str] = set()
    for name, (_, parsed) in seen.items():
        owner = parsed.owner if parsed is not None else None
        if owner is None or name in suspended or not check.newer(owner.revision):
            continue
        if root and relation(owner.root, root) is Relation.OTHER:
            continue  # another tree's domain: a conflict or kept, never touched anyway
        if not _would_change(desired, name, seen[name], fleet):
            continue
        commit = commit_of(owner.revision)
        plan.held.append(Held(plan.host, name, check.reason(owner.revision), revision=commit))
        held.add(name)
    return held


def _would_change(
    desired: DesiredHost, name: str, found: tuple[DomainObservation, ParsedDomain | None], fleet: Fleet | None
) -> bool:
    """Whether this plan would act on domain ``name``, found on the host (wanted here: change it; an
    orphan: undefine or move it out, not keep it): planned on a scratch draft (only for a domain a
    newer revision wrote), whose actions and records are then dropped."""
    scratch = PlanDraft(host=desired.name, uri=desired.uri)
    if name in desired.domains:
        _plan_domain(scratch, desired.domains[name], desired, found, fleet)
    elif fleet is not None and fleet.target_of(name, desired.name) is not None:
        return True  # the source half of a move (held or not: the move is this run's)
    else:
        plan_orphans(scratch, {name: found}, desired.domains, desired.deletion, fleet)
    return bool(scratch.actions or scratch.metadata_writes or scratch.errors)


def acted_on(actions: Iterable[Action]) -> set[str]:
    """The domains a plan defines, moves in, redefines, starts or restarts: those the pre-flight must pass."""
    kinds = {ActionKind.DEFINE, ActionKind.UPDATE, ActionKind.START, ActionKind.RESTART}
    return {a.domain for a in actions if a.kind in kinds or a.moves_in}


def _preflight(
    plan: PlanDraft,
    domains: Mapping[str, Domain],
    environment_of: Callable[[Sequence[Domain]], HostEnvironment] | None,
) -> tuple[Preflight, Mapping[str, SpaceFact]]:
    """Check the host has what the domains need; errors only block for domains the plan acts on.
    Also returns the filesystems of the host's pool folders, where the environment measured them."""
    acted = acted_on(plan.actions)
    if environment_of is None or not acted:
        return Preflight(), {}
    environment = environment_of([domains[name] for name in sorted(acted) if name in domains])
    busy = preflight({name: d for name, d in domains.items() if name in acted}, environment)
    idle = preflight({name: d for name, d in domains.items() if name not in acted}, environment)
    plan.errors.extend(busy.errors)
    unchecked = busy.unchecked  # the untouched domains' files were not asked about, on purpose
    return Preflight((), (*busy.warnings, *idle.errors, *idle.warnings), unchecked), environment.space


def _read_observed(plan: PlanDraft, observed: HostObservation) -> Seen:
    """Parse every observed domain and record its claim on the host (managed or not)."""
    seen: Seen = {}
    for live in observed.domains:
        try:
            parsed: ParsedDomain | None = parse_domain(
                live.xml, state="running" if live.active else "stopped", autostart=live.autostart
            )
        except DomainXMLError as err:
            if carries_owner(live.xml):
                plan.errors.append(f"managed domain {live.name!r} cannot be read: {err}")
            parsed = None
        seen[live.name] = (live, parsed)
        if parsed is not None:
            plan.before[live.name] = Usage.of(parsed.spec, active=live.active)
        elif (claim := read_usage(live.xml)) is not None:
            plan.before[live.name] = Usage(*claim, active=live.active)
        else:
            plan.errors.append(f"domain {live.name!r} has no readable vCPUs and memory to count")
    return seen


def _plan_domain(
    plan: PlanDraft,
    domain: Domain,
    desired: DesiredHost,
    found: tuple[DomainObservation, ParsedDomain | None] | None,
    fleet: Fleet | None,
) -> None:
    """Define a domain the host lacks (or move it in), change one that differs, or report a
    conflict: never touch a domain without our ownership mark, or one another manifest root owns."""
    name, owner_of, root = domain.name, desired.owner_of, desired.deletion.root
    if found is None:
        _plan_arrival(plan, domain, owner_of(name), fleet)
        return
    live, parsed = found
    if parsed is None:
        if not carries_owner(live.xml):
            plan.conflicts.append(Conflict(plan.host, name, "exists on the host but is not managed"))
        return
    if parsed.owner is None:
        plan.conflicts.append(
            Conflict(plan.host, name, "exists on the host but is not managed by virt-reconcile")
        )
        return
    if root and relation(parsed.owner.root, root) is Relation.OTHER:
        reason = f"managed from another manifest root ({parsed.owner.root}); this plan loaded {root}"
        plan.conflicts.append(Conflict(plan.host, name, reason))
        return
    try:
        plan_change(plan, domain, owner_of, live, parsed)
    except DomainXMLError as err:  # e.g. vCPUs pinned to NUMA cells: the merge cannot place new ones
        plan.errors.append(f"managed domain {name!r} cannot be updated: {err}")


def _plan_arrival(plan: PlanDraft, domain: Domain, owner: Owner, fleet: Fleet | None) -> None:
    """A domain absent here: a move from the host that holds it, a define, or held when it may still
    run somewhere this run cannot act on or see (two QEMUs must never write one disk)."""
    name = domain.name
    if fleet is None:
        plan_define(plan, domain, owner)
        return
    source = fleet.source_of(name, plan.host)
    if source is not None:
        if source not in fleet.selected:
            reason = f"managed on {source}: moving it needs {source} in this run too (--host {source})"
            plan.held.append(Held(plan.host, name, reason, peer=source))
        elif name in fleet.held:
            plan.held.append(Held(plan.host, name, fleet.held[name]))
        else:
            try:
                plan_define(plan, domain, owner, moved_from=source, source_xml=fleet.sources.get(name))
            except DomainXMLError as err:  # its old definition cannot take the manifest's spec
                plan.errors.append(f"domain {name!r} cannot move from {source}: {err}")
        return
    dark = [host for host in fleet.unobservable if host != plan.host]
    if dark:
        why = fleet.unobservable[dark[0]].removeprefix(f"{dark[0]}: ")  # shown here even when unselected
        reason = (
            f"not defined: {dark[0]} could not be observed ({why}), and {name} may still run there (a move)"
        )
        plan.held.append(Held(plan.host, name, reason))
        return
    plan_define(plan, domain, owner)


def _check_disks_in_use(
    plan: PlanDraft, desired: DesiredHost, seen: Seen, fleet: Fleet | None, pools: Mapping[str, PoolView]
) -> None:
    """One disk, one domain: a disk the manifests give a domain here must not belong to another
    domain that keeps it: one staying on the host unwanted (unmanaged, an orphan kept, a renamed
    domain's old self), one that keeps running here until a restart, or one kept on another host
    (shared storage). A volume is its file in its pool, so a path disk on that file is the same disk."""
    held = _disks_held(plan, desired, seen, pools)
    elsewhere = {
        path: f"{user!r} on {host}"
        for path, (user, host) in (fleet.kept_disks.items() if fleet is not None else ())
        if host != plan.host
    }
    for name, domain in desired.domains.items():
        for index, disk in enumerate(domain.spec.disks):
            used = disk_identity(disk, pools)
            user = held.get(used)
            where = f"spec.disks[{index}].{'path' if disk.volume is None else 'volume'} {disk.source}"
            if user is not None and user != name:
                why = _why_it_stays(user, seen, plan, desired)
                plan.errors.append(
                    f"domain {name!r}: {where} is the disk of {user!r}, "
                    f"which keeps it ({why}): one disk image, one domain"
                )
            elif disk.path is not None and disk.path in elsewhere:  # a pool's volume stays on its host
                plan.errors.append(
                    f"domain {name!r}: {where} is the disk of "
                    f"{elsewhere[disk.path]}, which stays there: one disk image, one domain"
                )


def _disks_held(
    plan: PlanDraft, desired: DesiredHost, seen: Seen, pools: Mapping[str, PoolView]
) -> dict[str, str]:
    """Each disk on this host (its path, or its volume's path) and the domain that will still hold
    it after the plan."""
    leaving = {action.domain for action in plan.actions if action.releases}
    stopping = {a.domain for a in plan.actions if a.kind is ActionKind.STOP}
    held: dict[str, str] = {}
    for name, (live, parsed) in seen.items():
        if name in leaving or parsed is None:
            continue
        if name not in desired.domains or (live.active and name not in stopping):
            for disk in parsed.spec.disks:  # unwanted and staying, or running on them until a restart
                held.setdefault(disk_identity(disk, pools), name)
    return held


def _why_it_stays(name: str, seen: Seen, plan: PlanDraft, desired: DesiredHost) -> str:
    """Why a domain that uses a wanted disk keeps it: not ours, an orphan kept, or still running."""
    parsed = seen[name][1]
    if parsed is None or parsed.owner is None:
        return "not managed by virt-reconcile"
    if name in desired.domains:
        return "running on it until it is stopped or restarted"
    for orphan in plan.orphans:
        if orphan.domain == name:
            return f"no longer in git, kept: {orphan.reason}"
    return "managed, kept"


def carries_owner(xml: str) -> bool:
    """Whether XML too broken to model still carries our ownership metadata."""
    return OWNER_NS in xml
