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

from reconciler.engine.actions import ActionKind
from reconciler.engine.hypervisor import HostEnvironment, HostObservation
from reconciler.engine.plan import DesiredHost, HostPlan, build_host_plan
from reconciler.errors import DomainXMLError
from reconciler.libvirtxml.parse import parse_domain
from reconciler.spec.models import Domain

#: Rounds of holding moves whose other half is blocked; each round only holds more, so two suffice.
_ROUNDS = 3


@dataclass(frozen=True)
class Fleet:
    """What one host's plan needs to know of the others."""

    managed: Mapping[str, tuple[str, ...]]  # domain -> hosts holding it as ours, in manifest order
    present: Mapping[str, frozenset[str]]  # observed host -> every domain name on it
    wanted: Mapping[str, tuple[str, ...]]  # domain -> hosts whose manifests want it
    selected: frozenset[str]  # the hosts this run may change
    unobservable: Mapping[str, str]  # host -> why it could not be observed
    held: Mapping[str, str] = field(default_factory=dict)  # domain -> why its move waits

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

    def unseen_wanter(self, name: str, source: str) -> str | None:
        """A host that wants ``name`` but was not observed in this run (so a move cannot be judged)."""
        for host in self.wanted.get(name, ()):
            if host != source and host not in self.present:
                return host
        return None


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
    managed: dict[str, tuple[str, ...]] = {}
    for host, seen in observed.items():
        rules = desired[host].deletion
        for domain in seen.domains:
            if domain.name not in wanted or host in wanted[domain.name]:
                continue  # only a domain wanted elsewhere can be moving
            try:
                owner = parse_domain(domain.xml).owner
            except DomainXMLError:
                continue
            if owner is not None and owner.root in ("", rules.root) and owner.host in ("", host):
                managed[domain.name] = (*managed.get(domain.name, ()), host)
    return Fleet(
        managed=managed,
        present={host: frozenset(d.name for d in seen.domains) for host, seen in observed.items()},
        wanted=wanted,
        selected=frozenset(selected),
        unobservable=dict(unobservable),
    )


#: Asks a host about the networks, bridges and files the given domains need (the pre-flight's facts).
EnvironmentOf = Callable[[str, Sequence[Domain]], HostEnvironment]


def plan_fleet(
    desired: Mapping[str, DesiredHost],
    observed: Mapping[str, HostObservation],
    unobservable: Mapping[str, str],
    selected: Sequence[str],
    environment_of: EnvironmentOf | None = None,
) -> dict[str, HostPlan]:
    """Plan every selected, observed host with the others in view; hold moves with a blocked half.

    A host whose plan acts on domains is asked for its environment (the pre-flight's facts) once the
    actions are known, so a plan with nothing to do costs no pre-flight calls.
    """
    fleet = build_fleet(desired, observed, unobservable, selected)
    asks = {host: _asked_once(host, environment_of) for host in selected} if environment_of else {}
    held: dict[str, str] = {}
    plans: dict[str, HostPlan] = {}
    for _ in range(_ROUNDS):
        view = replace(fleet, held=dict(held))
        plans = {
            host: build_host_plan(desired[host], observed[host], view, asks.get(host))
            for host in selected
            if host in observed
        }
        blocked = _blocked_moves(plans)
        if blocked.keys() <= held.keys():
            break
        held.update(blocked)
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
    """Each moving domain whose source or target plan is blocked, with the reason to show."""
    held = {}
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
    return "refused by the overcommit policy"
