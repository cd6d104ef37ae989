"""What one domain needs on its host: a define, or the updates, balloon, stop and start that take
it from what libvirt holds to what the manifest says (pure).

The planner (:mod:`reconciler.engine.plan`) decides which domains to look at; this module turns one
desired domain and its observation into actions on a :class:`PlanDraft`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from reconciler.engine.actions import Action, ActionKind, Conflict, Held, Orphan, Phase
from reconciler.engine.diff import LIVE_FIELDS, NO_RESTART_FIELDS, Change, normalise, spec_changes
from reconciler.engine.hypervisor import DomainObservation
from reconciler.engine.ownership import owner_to_write
from reconciler.engine.usage import Usage
from reconciler.libvirtxml.merge import merge_domain
from reconciler.libvirtxml.parse import ParsedDomain
from reconciler.libvirtxml.render import render_domain
from reconciler.spec.models import Domain, DomainSpec, Owner
from reconciler.spec.sizes import format_size


@dataclass
class PlanDraft:
    """A host plan while it is being worked out (callers only ever see the finished HostPlan)."""

    host: str
    uri: str
    actions: list[Action] = field(default_factory=list)
    orphans: list[Orphan] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    held: list[Held] = field(default_factory=list)
    before: dict[str, Usage] = field(default_factory=dict)


def _default_off(change: Change) -> bool:
    """A define's ``deletionProtection: false``: the default, not worth a line in the plan."""
    return change.field == "deletionProtection" and change.after is False


def plan_define(
    plan: PlanDraft, domain: Domain, owner: Owner, *, moved_from: str = "", source_xml: str | None = None
) -> None:
    """Define a domain the host lacks (the target half of a move when ``moved_from`` names its old
    host), and start it when the manifest wants it running. A moved domain keeps what its old
    definition held beyond the manifest (uuid, MACs, firmware, devices): ``source_xml`` merged."""
    spec = domain.spec
    xml = merge_domain(source_xml, spec, owner) if source_xml else render_domain(domain.name, spec, owner)
    plan.actions.append(
        Action(
            ActionKind.MOVE if moved_from else ActionKind.DEFINE,
            plan.host,
            domain.name,
            Phase.DEFINE,
            changes=tuple(c for c in spec_changes(None, spec) if c.field != "state" and not _default_off(c)),
            reason=f"from {moved_from}" if moved_from else "in git, absent on the host",
            xml=xml,
            autostart=spec.autostart,
            spec=spec,
            peer=moved_from,
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


def _ownership_change(found: Owner, wanted: Owner) -> Change | None:
    """The ownership record to rewrite, if the domain now belongs to another root or Host entry, or
    an import's pending mark is to be cleared (its first apply from git). Revision and spec hash
    alone never cause a redefine. ``wanted`` is what :func:`owner_to_write` gives: a plan of part of
    a tree keeps the recorded root."""
    before = (found.root, found.host, found.pending)
    after = (wanted.root, wanted.host, False)
    if not (found.pending or before[:2] != after[:2]):
        return None  # unchanged

    def describe(root: str, host: str, pending: bool) -> str:
        return (
            "adopted (pending) " if pending else ""
        ) + f"root {root or '(unrecorded)'}, host {host or '?'}"

    return Change("ownership", describe(*before), describe(*after))


def plan_change(
    plan: PlanDraft,
    domain: Domain,
    owner_of: Callable[[str], Owner],
    live: DomainObservation,
    parsed: ParsedDomain,
) -> None:
    """The actions that take one managed domain from what libvirt holds to what its manifest says."""
    current = parsed.spec
    desired = normalise(domain.spec, current)
    owner = owner_to_write(parsed.owner, owner_of(domain.name))
    ownership = _ownership_change(parsed.owner, owner) if parsed.owner else None
    if desired == current and ownership is None:
        return  # the common case, decided without flattening both specs
    changes = spec_changes(current, desired) + ((ownership,) if ownership else ())
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
            xml_for=(lambda spec: merge_domain(live.xml, spec, owner)) if redefine else None,
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


def _plan_updates(plan: PlanDraft, name: str, update: _Update) -> None:
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
    plan: PlanDraft,
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
