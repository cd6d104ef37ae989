"""Plans as plain data, and ``build_host_plan``: desired domains vs one observed host (pure).

A plan is, per host, an ordered list of actions from a closed set (docs/design.md §3), plus what the plan
will not touch and why: orphans (managed, gone from git), conflicts (same name, not ours) and
errors (managed domains whose XML cannot be read). Actions are ordered so a host shrinks before
it grows: no intermediate state uses more than the larger of before and after.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from reconciler.engine.actions import Action, ActionKind, Conflict, Orphan, Phase
from reconciler.engine.diff import LIVE_FIELDS, NO_RESTART_FIELDS, Change, normalise, spec_changes
from reconciler.engine.hypervisor import DomainObservation, HostObservation
from reconciler.engine.policy import HostPolicy, PolicyReport
from reconciler.engine.usage import Usage
from reconciler.errors import DomainXMLError, HostError
from reconciler.libvirtxml.merge import merge_domain
from reconciler.libvirtxml.ownership import OWNER_NS
from reconciler.libvirtxml.parse import ParsedDomain, parse_domain, read_usage
from reconciler.libvirtxml.render import render_domain
from reconciler.spec.models import Domain, DomainSpec, Owner
from reconciler.spec.sizes import format_size

__all__ = [
    "Action",
    "ActionKind",
    "Conflict",
    "DesiredHost",
    "HostPlan",
    "Orphan",
    "Phase",
    "Plan",
    "build_host_plan",
]


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
    before: Mapping[str, Usage] = field(default_factory=dict)  # every domain's claim, as observed
    policy: PolicyReport | None = None
    observed: HostObservation | None = None  # what the plan was made from (snapshots, saved plans)
    host_error: HostError | None = None  # the host could not be reached or failed: retryable or not

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
        """Nothing is applied on a host with a conflict, an unreadable managed domain or a refusal."""
        return bool(self.conflicts or self.errors) or self.refused


@dataclass
class _Draft:
    """The host plan while it is being worked out (private: callers only ever see a HostPlan)."""

    host: str
    uri: str
    actions: list[Action] = field(default_factory=list)
    orphans: list[Orphan] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    before: dict[str, Usage] = field(default_factory=dict)


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
        """Whether any host has a conflict or an error."""
        return any(host.conflicts or host.errors for host in self.hosts.values())

    @property
    def refused(self) -> bool:
        """Whether the overcommit policy refuses the plan of any host."""
        return any(host.refused for host in self.hosts.values())


@dataclass(frozen=True)
class DesiredHost:
    """What the manifests want on one host: its domains, the ownership mark each will carry, whether
    managed domains missing from git may be undefined, and the overcommit policy to keep."""

    name: str
    uri: str
    domains: Mapping[str, Domain]
    owner_of: Callable[[str], Owner]
    allow_delete: bool = False
    policy: HostPolicy | None = None


_Seen = dict[str, tuple[DomainObservation, ParsedDomain | None]]


def build_host_plan(desired: DesiredHost, observed: HostObservation) -> HostPlan:
    """Plan one host: define what is missing, change what differs, report orphans and conflicts.

    With ``desired.policy``, the plan carries the policy's verdict on its actions.
    """
    plan = _Draft(host=desired.name, uri=desired.uri)
    seen = _read_observed(plan, observed)
    for name, domain in desired.domains.items():
        _plan_domain(plan, domain, desired.owner_of, seen.get(name))
    _plan_orphans(plan, seen, desired)
    plan.actions.sort(key=lambda action: action.phase)
    policy = desired.policy
    return HostPlan(
        host=desired.name,
        uri=desired.uri,
        actions=tuple(plan.actions),
        orphans=tuple(plan.orphans),
        conflicts=tuple(plan.conflicts),
        errors=tuple(plan.errors),
        before=plan.before,
        policy=policy.judge(observed, plan.before, plan.actions) if policy is not None else None,
        observed=observed,
    )


def _read_observed(plan: _Draft, observed: HostObservation) -> _Seen:
    """Parse every observed domain and record its claim on the host (managed or not)."""
    seen: _Seen = {}
    for live in observed.domains:
        try:
            parsed: ParsedDomain | None = parse_domain(
                live.xml, state="running" if live.active else "stopped", autostart=live.autostart
            )
        except DomainXMLError as err:
            if _carries_owner(live.xml):
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
    plan: _Draft,
    domain: Domain,
    owner_of: Callable[[str], Owner],
    found: tuple[DomainObservation, ParsedDomain | None] | None,
) -> None:
    """Define a domain the host lacks, change one that differs, or report a conflict: never touch a
    domain without our ownership mark."""
    name = domain.name
    if found is None:
        _plan_define(plan, domain, owner_of(name))
        return
    live, parsed = found
    if parsed is None:
        if not _carries_owner(live.xml):
            plan.conflicts.append(Conflict(plan.host, name, "exists on the host but is not managed"))
        return
    if parsed.owner is None:
        plan.conflicts.append(
            Conflict(plan.host, name, "exists on the host but is not managed by virt-reconcile")
        )
        return
    try:
        _plan_change(plan, domain, owner_of, live, parsed)
    except DomainXMLError as err:  # e.g. vCPUs pinned to NUMA cells: the merge cannot place new ones
        plan.errors.append(f"managed domain {name!r} cannot be updated: {err}")


def _plan_orphans(plan: _Draft, seen: _Seen, desired: DesiredHost) -> None:
    """Managed domains no manifest names: reported, and undefined only when deleting is allowed."""
    for name, (live, parsed) in seen.items():
        if name in desired.domains or parsed is None or parsed.owner is None:
            continue
        plan.orphans.append(Orphan(plan.host, name, running=live.active, delete=desired.allow_delete))
        if desired.allow_delete:
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


def _default_off(change: Change) -> bool:
    """A define's ``deletionProtection: false``: the default, not worth a line in the plan."""
    return change.field == "deletionProtection" and change.after is False


def _carries_owner(xml: str) -> bool:
    """Whether XML too broken to model still carries our ownership metadata."""
    return OWNER_NS in xml


def _plan_define(plan: _Draft, domain: Domain, owner: Owner) -> None:
    spec = domain.spec
    plan.actions.append(
        Action(
            ActionKind.DEFINE,
            plan.host,
            domain.name,
            Phase.DEFINE,
            changes=tuple(c for c in spec_changes(None, spec) if c.field != "state" and not _default_off(c)),
            reason="in git, absent on the host",
            xml=render_domain(domain.name, spec, owner),
            autostart=spec.autostart,
            spec=spec,
        )
    )
    if spec.state == "running":
        plan.actions.append(
            Action(
                ActionKind.START,
                plan.host,
                domain.name,
                Phase.START,
                changes=(Change("state", None, "running"),),
            )
        )


def _plan_change(
    plan: _Draft,
    domain: Domain,
    owner_of: Callable[[str], Owner],
    live: DomainObservation,
    parsed: ParsedDomain,
) -> None:
    current = parsed.spec
    desired = normalise(domain.spec, current)
    if desired == current:
        return  # the common case, decided without flattening both specs
    changes = spec_changes(current, desired)
    if not changes:
        return  # equal but for the order of disks, which are compared by target
    host, name = plan.host, domain.name
    by_field = {change.top_field: change for change in changes}
    redefine = tuple(c for c in changes if c.top_field not in LIVE_FIELDS)
    autostart = by_field.get("autostart")

    if "state" in by_field and desired.state == "stopped":
        plan.actions.append(Action(ActionKind.STOP, host, name, Phase.STOP, changes=(by_field["state"],)))
    balloon = by_field.get("currentMemory")
    stays_running = live.active and desired.state == "running"
    if balloon and redefine and not stays_running:
        redefine += (balloon,)  # no live target to set: the redefined config carries it
        balloon = None
    if balloon:
        plan.actions.append(_balloon(plan, name, current=current, desired=desired, live=live, change=balloon))
    if redefine or autostart:
        update = _Update(
            current=current,
            desired=desired,
            changes=redefine + ((autostart,) if autostart else ()),
            ballooned=balloon is not None,
            restart=stays_running and any(c.top_field not in NO_RESTART_FIELDS for c in redefine),
            xml_for=(lambda spec: merge_domain(live.xml, spec, owner_of(name))) if redefine else None,
        )
        _plan_updates(plan, name, update)
    if "state" in by_field and desired.state == "running":
        plan.actions.append(Action(ActionKind.START, host, name, Phase.START, changes=(by_field["state"],)))


_RESOURCES = ("vcpus", "memory", "currentMemory")


def _resources(spec: DomainSpec) -> tuple[int, int, int]:
    return spec.vcpus, spec.memory, spec.current_memory


@dataclass(frozen=True)
class _Update:
    """A redefine (and/or autostart change) of one domain, before it is split into phases."""

    current: DomainSpec
    desired: DomainSpec
    changes: tuple[Change, ...]
    ballooned: bool  # a balloon action of the same plan owns the live current memory
    restart: bool  # the domain runs and stays running: the new definition waits for a restart
    xml_for: Callable[[DomainSpec], str] | None  # None: autostart only, nothing to redefine


def _plan_updates(plan: _Draft, name: str, update: _Update) -> None:
    """One update, in the shrink phase when it frees resources and the grow phase when it takes them.

    An update that lowers one resource and raises another (fewer vCPUs, more memory) is split in two
    redefines, the lowering half first, so applying a plan never passes through a state that uses
    more than the larger of before and after. A balloon action of the same plan owns the live
    current memory, so a rise there alone does not split the update.
    """
    current, desired, changes = update.current, update.desired, update.changes
    restart, xml_for = update.restart, update.xml_for
    old, new = _resources(current), _resources(desired)
    rising = {field for field, a, b in zip(_RESOURCES, old, new, strict=True) if b > a}
    falling = {field for field, a, b in zip(_RESOURCES, old, new, strict=True) if b < a}
    if update.ballooned:
        rising.discard("currentMemory")
    autostart = desired.autostart if any(c.field == "autostart" for c in changes) else None
    if rising and falling and xml_for is not None:
        low = desired.model_copy(
            update={
                "vcpus": min(current.vcpus, desired.vcpus),
                "memory": min(current.memory, desired.memory),
                "current_memory": min(current.current_memory, desired.current_memory, desired.memory),
            }
        )
        plan.actions.append(
            Action(
                ActionKind.UPDATE,
                plan.host,
                name,
                Phase.UPDATE_SHRINK,
                changes=tuple(c for c in changes if c.field not in rising),
                restart=restart,
                reason="first half of an update that both frees and takes resources",
                xml=xml_for(low),
                autostart=autostart,
                spec=low,
            )
        )
        changes, autostart = tuple(c for c in changes if c.field in rising), None
    plan.actions.append(
        Action(
            ActionKind.UPDATE,
            plan.host,
            name,
            Phase.UPDATE_GROW if rising else Phase.UPDATE_SHRINK,
            changes=changes,
            restart=restart,
            xml=xml_for(desired) if xml_for is not None else None,
            autostart=autostart,
            spec=desired if xml_for is not None else None,
        )
    )


def _balloon(
    plan: _Draft,
    name: str,
    *,
    current: DomainSpec,
    desired: DomainSpec,
    live: DomainObservation,
    change: Change,
) -> Action:
    """A balloon action: config always; live too when the domain runs and stays running.

    The live target cannot exceed the memory the running guest was started with; anything above
    waits for the next boot, where the persistent config takes effect.
    """
    live_target = None
    if live.active and desired.state == "running":  # a domain about to stop needs no live target
        live_target = min(desired.current_memory, current.memory)  # the adapter also checks the live max
    down = desired.current_memory < current.current_memory
    reason = (
        ""
        if live_target in (None, desired.current_memory)
        else (f"live target capped at {format_size(live_target or 0)} until the next boot")
    )
    return Action(
        ActionKind.BALLOON,
        plan.host,
        name,
        Phase.BALLOON_DOWN if down else Phase.BALLOON_UP,
        changes=(change,),
        reason=reason,
        config_memory=desired.current_memory,
        live_memory=live_target,
    )
