"""Planning several hosts together: where each domain lives, so a domain whose host changed is one
move, never a copy (pure).

A move takes a domain off its old host (graceful stop, then undefine; disks untouched) before it is
defined and started on the new one. It needs both hosts in the run and neither blocked; otherwise
both halves are held, with the reason. A domain the manifests want on a host where it is absent
is not defined while some host that could hold it could not be observed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from reconciler.engine.actions import ActionKind
from reconciler.engine.hypervisor import HostEnvironment, HostObservation
from reconciler.engine.ownership import Relation, relation
from reconciler.engine.plan import DesiredHost, HostPlan, build_host_plan
from reconciler.errors import DomainXMLError
from reconciler.libvirtxml.parse import parse_domain
from reconciler.spec.models import Domain

T = TypeVar("T")


@dataclass(frozen=True)
class Fleet:
    """What one host's plan needs to know of the others."""

    managed: Mapping[str, tuple[str, ...]]  # domain -> hosts holding it as ours, in manifest order
    present: Mapping[str, frozenset[str]]  # observed host -> every domain name on it
    wanted: Mapping[str, tuple[str, ...]]  # domain -> hosts whose manifests want it
    selected: frozenset[str]  # the hosts this run may change
    unobservable: Mapping[str, str]  # host -> why it could not be observed
    held: Mapping[str, str] = field(default_factory=dict)  # domain -> why its move waits
    sources: Mapping[str, str] = field(default_factory=dict)  # domain -> its XML on the host it leaves
    kept_disks: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # path -> (domain, host)

    def target_of(self, name: str, source: str) -> str | None:
        """The host ``name`` moves to from ``source``: the first that wants it and was seen without it."""
        for host in self.wanted.get(name, ()):
            if host != source and host in self.present and name not in self.present[host]:
                return host
        return None

    def source_of(self, name: str, target: str) -> str | None:
        """The host ``name`` moves from to ``target``: one holding it as ours whose move goes there."""
        for host in self.managed.get(name, ()):
            if (
                host != target
                and host not in self.wanted.get(name, ())
                and self.target_of(name, host) == target
            ):
                return host
        return None

    def blocker(self, name: str, source: str) -> str | None:
        """Why ``name``, ours on ``source`` and wanted on another host, can neither move nor go: that
        host was not observed, or holds another domain of that name (None: neither)."""
        for host in self.wanted.get(name, ()):
            if host == source:
                continue
            if host not in self.present:
                return f"in git for {host} now, which this run did not observe"
            if name in self.present[host] and host not in self.managed_anywhere(name):
                return f"in git for {host} now, where a domain of that name exists that is not ours"
        return None

    def managed_anywhere(self, name: str) -> tuple[str, ...]:
        """Every host holding ``name`` as ours (wanted there or not)."""
        return self.managed.get(name, ())


def build_fleet(
    desired: Mapping[str, DesiredHost],
    observed: Mapping[str, HostObservation],
    unobservable: Mapping[str, str],
    selected: Sequence[str],
) -> Fleet:
    """The fleet view from every host's manifests and every observation made in this run."""
    wanted: dict[str, tuple[str, ...]] = {}
    for host, want in desired.items():
        for name in want.domains:
            wanted[name] = (*wanted.get(name, ()), host)
    present_on: dict[str, int] = {}
    for seen in observed.values():
        for domain in seen.domains:
            present_on[domain.name] = present_on.get(domain.name, 0) + 1
    managed: dict[str, tuple[str, ...]] = {}
    sources: dict[str, str] = {}
    for host, seen in observed.items():
        for domain in seen.domains:
            hosts = wanted.get(domain.name, ())
            if not hosts or (hosts == (host,) and present_on[domain.name] == 1):
                continue  # wanted nowhere, or only here and present nowhere else: no move in sight
            if _ours(domain.xml, host, desired[host].deletion.root):
                managed[domain.name] = (*managed.get(domain.name, ()), host)
                if host not in wanted[domain.name]:
                    sources.setdefault(domain.name, domain.xml)
    return Fleet(
        managed=managed,
        present={host: frozenset(d.name for d in seen.domains) for host, seen in observed.items()},
        wanted=wanted,
        selected=frozenset(selected),
        unobservable=dict(unobservable),
        sources=sources,
    )


def _ours(xml: str, host: str, root: str) -> bool:
    """Whether a domain is this manifest tree's, through this Host entry (or recorded before either
    was): only such a domain moves."""
    try:
        owner = parse_domain(xml).owner
    except DomainXMLError:
        return False
    if owner is None or owner.host not in ("", host):
        return False
    return relation(owner.root, root) in (Relation.SAME, Relation.UNRECORDED) or not root


def _kept_disks(
    desired: Mapping[str, DesiredHost], observed: Mapping[str, HostObservation], plans: Mapping[str, HostPlan]
) -> dict[str, tuple[str, str]]:
    """Disks of domains no manifest wants that stay where they are after these plans (an unmanaged
    domain, an orphan kept): another host's domain must not be given one of them."""
    leaving = {(plan.host, a.domain) for plan in plans.values() for a in plan.actions if a.releases}
    kept: dict[str, tuple[str, str]] = {}
    for host, seen in observed.items():
        for domain in seen.domains:
            if domain.name in desired[host].domains or (host, domain.name) in leaving:
                continue
            try:
                disks = parse_domain(domain.xml).spec.disks
            except DomainXMLError:
                continue
            for disk in disks:
                if disk.path is not None:  # a pool's volume is its host's alone
                    kept.setdefault(disk.path, (domain.name, host))
    return kept


#: Asks a host about the networks, bridges and files the given domains need (the pre-flight's facts).
EnvironmentOf = Callable[[str, Sequence[Domain]], HostEnvironment]
#: Runs ``work(host)`` for each host, side by side or not, and returns the results by host.
EachHost = Callable[[Sequence[str], Callable[[str], T]], dict[str, T]]


def one_by_one(hosts: Sequence[str], work: Callable[[str], T]) -> dict[str, T]:
    """``work`` for each host in turn (the default :data:`EachHost`)."""
    return {host: work(host) for host in hosts}


def plan_fleet(
    desired: Mapping[str, DesiredHost],
    observed: Mapping[str, HostObservation],
    unobservable: Mapping[str, str],
    selected: Sequence[str],
    environment_of: EnvironmentOf | None = None,
    *,
    each_host: EachHost[HostPlan] = one_by_one,
) -> dict[str, HostPlan]:
    """Plan every selected, observed host with the others in view; hold moves with a blocked half.

    A host whose plan acts on domains is asked for its environment (the pre-flight's facts) once the
    actions are known, so a plan with nothing to do costs no pre-flight calls. ``each_host`` plans
    the hosts side by side, so hosts asked for their environment are asked at once.
    """
    fleet = build_fleet(desired, observed, unobservable, selected)
    asks = {host: _asked_once(host, environment_of) for host in selected} if environment_of else {}
    held: dict[str, str] = {}
    kept: dict[str, tuple[str, str]] = {}
    plans: dict[str, HostPlan] = {}
    # Each round only holds more moves and keeps more disks, so this ends; a chain of N moves whose
    # last target is blocked needs N + 1 rounds.
    for _ in range(2 + sum(1 for hosts in fleet.managed.values() for _ in hosts)):
        view = replace(fleet, held=dict(held), kept_disks=dict(kept))
        plans = each_host(
            [host for host in selected if host in observed],
            lambda host, view=view: build_host_plan(desired[host], observed[host], view, asks.get(host)),  # type: ignore[misc]
        )
        blocked = _blocked_moves(plans)
        staying = _kept_disks(desired, observed, plans)
        if blocked.keys() <= held.keys() and staying.keys() <= kept.keys():
            break
        held.update(blocked)
        kept.update(staying)
    return plans


def _asked_once(host: str, environment_of: EnvironmentOf) -> Callable[[Sequence[Domain]], HostEnvironment]:
    """The host's environment for the plan's domains, asked of the host once however many rounds
    plan it (a round that only holds moves acts on no new domain)."""
    asked: dict[tuple[str, ...], HostEnvironment] = {}

    def environment(domains: Sequence[Domain]) -> HostEnvironment:
        key = tuple(domain.name for domain in domains)
        if key not in asked:
            asked[key] = environment_of(host, domains)
        return asked[key]

    return environment


def _blocked_moves(plans: Mapping[str, HostPlan]) -> dict[str, str]:
    """Each moving domain whose source or target plan is blocked, with the reason to show; and each
    domain a host holds for the newer revision that wrote it: the other half of its move waits too."""
    held = {
        item.domain: f"held on {plan.host}: {item.reason}"
        for plan in plans.values()
        for item in plan.held
        if item.revision
    }
    for plan in plans.values():
        for action in plan.actions:
            if action.kind is not ActionKind.MOVE:
                continue
            source, target = (plan.host, action.peer) if action.releases else (action.peer, plan.host)
            for side in (plans.get(source), plans.get(target)):
                if side is not None and side.blocked:
                    held[action.domain] = (
                        f"move from {source} to {target} held: nothing is applied on {side.host} "
                        f"({_why_blocked(side)})"
                    )
    return held


def _why_blocked(plan: HostPlan) -> str:
    """The first reason a host's plan is blocked, for a held move's message."""
    if plan.errors:
        return plan.errors[0]
    if plan.conflicts:
        return f"conflict: {plan.conflicts[0].domain}"
    return plan.paused_because or "refused by the overcommit policy"
