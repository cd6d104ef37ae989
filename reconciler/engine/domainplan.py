"""What one domain needs on its host: a define, or the updates, balloon, stop and start that take
it from what libvirt holds to what the manifest says (pure).

The planner (:mod:`reconciler.engine.plan`) decides which domains to look at; this module turns one
desired domain and its observation into actions on a :class:`PlanDraft`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from reconciler.engine.actions import Action, ActionKind, Conflict, Held, Orphan, Phase
from reconciler.engine.diff import (
    LIVE_FIELDS,
    Change,
    normalise,
    restarts_nothing,
    spec_changes,
    with_volume_details,
)
from reconciler.engine.hypervisor import DomainObservation
from reconciler.engine.ownership import owner_to_write
from reconciler.engine.runstrategy import settle
from reconciler.engine.usage import Usage
from reconciler.libvirtxml.consoles import as_defined
from reconciler.libvirtxml.merge import merge_domain
from reconciler.libvirtxml.ownership import definition_key
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
    warnings: list[str] = field(default_factory=list)  # what the plan does that the operator should know
    before: dict[str, Usage] = field(default_factory=dict)
    #: Running domains observed waiting for a restart (a definition written while they ran), and what waits.
    waiting: dict[str, str] = field(default_factory=dict)
    #: The same once this plan's updates are applied: what ``apply --restart-pending`` restarts.
    restarts: dict[str, str] = field(default_factory=dict)
    #: Ownership to rewrite without a redefine (a metadata write): the off-on-purpose record.
    metadata_writes: dict[str, Owner] = field(default_factory=dict)


def _default_off(change: Change) -> bool:
    """A define's ``deletionProtection: false``: the default, not worth a line in the plan."""
    return change.field == "deletionProtection" and change.after is False


def plan_define(
    plan: PlanDraft, domain: Domain, owner: Owner, *, moved_from: str = "", source_xml: str | None = None
) -> None:
    """Define a domain the host lacks (the target half of a move when ``moved_from`` names its old
    host), and start it when the manifest wants it running. A moved domain keeps what its old
    definition held beyond the manifest (uuid, MACs, firmware, devices): ``source_xml`` merged."""
    spec = domain.spec if source_xml else as_defined(domain.spec)  # what a new definition reads back as
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
    recorded_off = parsed.owner.off_on_purpose if parsed.owner else ""
    observed = with_volume_details(parsed.spec, domain.spec)  # volume sizes: compared by engine.volumes
    settled = settle(observed, normalise(domain.spec, parsed.spec), live, recorded_off)  # runStrategy
    current, desired = settled.current, settled.desired
    host, name = plan.host, domain.name
    _record_off(plan, name, parsed.owner, settled.off_on_purpose)
    stays_running = live.active and desired.state == "running"
    waiting = waiting_restart(parsed.owner, live) if stays_running else None
    if waiting is not None:
        plan.waiting[name] = plan.restarts[name] = waiting
    owner = owner_to_write(parsed.owner, owner_of(name))
    ownership = _ownership_change(parsed.owner, owner) if parsed.owner else None
    if desired == current and ownership is None:
        return  # the common case, decided without flattening both specs
    changes = spec_changes(current, desired) + ((ownership,) if ownership else ())
    if not changes:
        return  # equal but for the order of disks, which are compared by target
    by_field = {change.top_field: change for change in changes}
    redefine = tuple(c for c in changes if c.top_field not in LIVE_FIELDS)
    autostart = by_field.get("autostart")

    if "state" in by_field and desired.state == "stopped":
        plan.actions.append(Action(ActionKind.STOP, host, name, Phase.STOP, changes=(by_field["state"],)))
    balloon = by_field.get("currentMemory")
    if balloon and redefine and not stays_running:
        redefine += (balloon,)  # no live target to set: the redefined config carries it
        balloon = None
    if balloon:
        plan.actions.append(_balloon(plan, name, current=current, desired=desired, live=live, change=balloon))
    if redefine or autostart:
        needs = [c for c in redefine if not restarts_nothing(c)] if stays_running else []
        marks = _restart_mark(plan, name, live, waiting, needs) | {"off_on_purpose": settled.off_on_purpose}
        written = owner.model_copy(update=marks)
        if redefine:
            plan.metadata_writes.pop(name, None)  # the redefine writes the record itself
        update = _Update(
            current=current,
            desired=desired,
            changes=redefine + ((autostart,) if autostart else ()),
            ballooned=balloon is not None,
            restart=bool(needs) and name in plan.restarts,
            xml_for=(lambda spec: merge_domain(live.xml, spec, written)) if redefine else None,
        )
        _plan_updates(plan, name, update)
    if "state" in by_field and desired.state == "running":
        start = Action(
            ActionKind.START, host, name, Phase.START, changes=(by_field["state"],), reason=settled.why
        )
        plan.actions.append(start)


def _record_off(plan: PlanDraft, name: str, found: Owner | None, off_on_purpose: str) -> None:
    """A metadata write of the domain's off-on-purpose record when it changes (a redefine of the
    same plan writes it instead): seen off on purpose now, or running again."""
    if found is not None and found.off_on_purpose != off_on_purpose:
        plan.metadata_writes[name] = found.model_copy(update={"off_on_purpose": off_on_purpose})


#: The most of ``restartWaits`` kept in a domain's metadata (a long list of device changes is cut).
MAX_WAITS_TEXT = 1000
_WAITS_SEPARATOR, _ARROW = "; ", " → "


def waiting_restart(owner: Owner | None, live: DomainObservation) -> str | None:
    """What a running domain's definition still waits for (its restart mark's text), or None when
    no restart is pending: no mark, or the running instance was started from the marked definition.

    What runs is told by the ownership of the live definition (``running_definition``), not by the
    domain id: ids repeat after a libvirtd restart or a host reboot. Only without it (an older
    snapshot) is the id compared with the one the mark recorded."""
    if owner is None or owner.restart_instance < 0 or not live.active:
        return None
    if live.running_definition is not None:
        if live.running_definition == definition_key(owner):
            return None  # started from the marked definition (a reboot inside the guest is no start)
    elif live.instance != owner.restart_instance:
        return None  # shut down and started since (a reboot inside the guest keeps the instance)
    return owner.restart_waits or "a redefinition"


def _restart_mark(
    plan: PlanDraft, name: str, live: DomainObservation, waiting: str | None, needs: list[Change]
) -> dict[str, object]:
    """The restart mark a redefine of a running domain writes into its ownership (none when nothing
    waits), recording what waits after it in ``plan.restarts``. A mark still pending is carried on,
    its changes merged with the new ones (vcpus 2 → 1, then 1 → 3: vcpus 2 → 3, from what runs)."""
    if not needs and waiting is None:
        return {}
    waits = merged_waits(waiting, needs)
    if not waits:  # every change goes back to what runs: nothing waits any more
        plan.restarts.pop(name, None)
        return {}
    plan.restarts[name] = waits
    if live.instance < 0:
        return {}  # an instance not known: nothing to recognise it by later
    return {"restart_instance": live.instance, "restart_waits": waits}


def merged_waits(earlier: str | None, changes: list[Change]) -> str:
    """``vcpus 2 → 1; memory 2GiB → 1GiB``: an earlier mark's text with ``changes`` merged in, each
    field from the value that runs to its new one; fields back to what runs are left out."""
    fields: dict[str, tuple[str, str]] = {}
    unread: list[str] = []
    for entry in earlier.split(_WAITS_SEPARATOR) if earlier else ():
        field_name, _, values = entry.partition(" ")
        before, arrow, after = values.partition(_ARROW)
        if arrow:
            fields[field_name] = (before, after)
        else:
            unread.append(entry)  # written by hand, or cut short: kept as it is
    for change in changes:
        before = fields[change.field][0] if change.field in fields else _shown(change.before)
        fields[change.field] = (before, _shown(change.after))
    entries = unread + [f"{name} {before}{_ARROW}{after}" for name, (before, after) in fields.items()]
    text = _WAITS_SEPARATOR.join(entry for entry in entries if not _unchanged(entry))
    return text if len(text) <= MAX_WAITS_TEXT else text[: MAX_WAITS_TEXT - 1] + "…"


def _unchanged(entry: str) -> bool:
    before, arrow, after = entry.partition(" ")[2].partition(_ARROW)
    return bool(arrow) and before == after


def _shown(value: object) -> str:
    """A field value as plans show it (4GiB, true, null)."""
    return value if isinstance(value, str) and value else json.dumps(value)


def plan_restarts(plan: PlanDraft) -> None:
    """A restart for every running domain whose definition waits for one once this plan's updates
    are applied (``apply --restart-pending``); it changes no usage, so the policy sees nothing."""
    for name, waits in plan.restarts.items():
        plan.actions.append(Action(ActionKind.RESTART, plan.host, name, Phase.RESTART, reason=waits))


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
