"""Overcommit policy (docs/design.md §4): usage arithmetic, limits, and which plans are refused (pure).

For a host with ``C`` CPUs, memory ``M`` and ``R`` reserved, evaluated on the state a plan leaves:

* ``cpu.total``       sum of vCPUs            <= floor(C x cpu.ratio)
* ``cpu.perDomain``   vCPUs of each domain    <= maxVcpusPerDomain (default C)
* ``memory.commit``   sum of maximum memory   <= (M - R) x memory.ratio
* ``memory.balloon``  sum of current memory of running domains <= (M - R) + swap + KSM savings

Every domain counts, managed or not; shut-off ones only while ``cpu.countInactive`` (for cpu.total
and memory.commit alike, as docs/design.md §4.2 counts memory.commit "like cpu.total"). A plan is refused
when a rule fails afterwards *and* the plan raised that rule's usage, so a plan that keeps or lowers
usage on an overloaded host is always allowed.

The host state after each action is simulated with :func:`step`, which also gives the peak usage
reached while the plan is applied in order (it never exceeds the larger of before and after).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from decimal import Decimal

from reconciler.engine.actions import Action, ActionKind
from reconciler.engine.hypervisor import HostObservation
from reconciler.engine.usage import HostState, Usage
from reconciler.spec.hostpolicy import Capacity, Overcommit
from reconciler.spec.sizes import human_size

RULES = ("cpu.total", "cpu.perDomain", "memory.commit", "memory.balloon")
TOP_CONTRIBUTORS = 3


@dataclass(frozen=True)
class HostFacts:
    """What the policy measures against: CPUs, memory (bytes), swap and KSM savings (bytes)."""

    cpus: int
    memory: int
    swap: int
    ksm_saved: int


def host_facts(capacity: Capacity, *, cpus: int, memory: int, swap: int | None, ksm_saved: int) -> HostFacts:
    """Observed facts, with the manifest's ``spec.capacity`` overriding each one it sets."""
    return HostFacts(
        cpus=capacity.cpus or cpus,
        memory=capacity.memory or memory,
        swap=capacity.swap if capacity.swap is not None else (swap or 0),
        ksm_saved=ksm_saved,
    )


@dataclass(frozen=True)
class HostPolicy:
    """A host's overcommit policy and the capacity its manifest sets (overriding what is observed)."""

    capacity: Capacity
    overcommit: Overcommit

    def judge(self, observed: HostObservation, before: HostState, actions: Iterable[Action]) -> PolicyReport:
        """Every rule on the state ``actions`` leave, with the facts observed on the host."""
        facts = host_facts(
            self.capacity,
            cpus=observed.cpus,
            memory=observed.memory,
            swap=observed.swap,
            ksm_saved=observed.ksm_saved,
        )
        return evaluate(self.overcommit, facts, before, actions)


@dataclass(frozen=True)
class RuleResult:
    """One rule on one host: usage before, after and at the peak of the apply, against the limit."""

    rule: str
    unit: str  # "vCPUs" or "bytes"
    before: int
    after: int
    peak: int
    limit: int
    arithmetic: str
    raised: bool  # the plan raised usage that ends above the limit: grounds for refusal
    contributors: tuple[tuple[str, int], ...] = ()  # domains adding most: (name, added)

    @property
    def ok(self) -> bool:
        """Whether the rule holds after the plan."""
        return self.after <= self.limit

    def show(self, value: int) -> str:
        """A usage figure in the rule's unit."""
        return human_size(value) if self.unit == "bytes" else str(value)

    def message(self) -> str:
        """``cpu.total: 9 → 11 vCPUs > floor(4 CPUs × 2.5) = 10 (adding most: web-03 +2)``."""
        unit = "" if self.unit == "bytes" else f" {self.unit}"
        text = f"{self.rule}: {self.show(self.before)} → {self.show(self.after)}{unit} > {self.arithmetic}"
        if self.contributors:
            adding = ", ".join(f"{name} +{self.show(amount)}" for name, amount in self.contributors)
            label = "over the limit" if self.rule == "cpu.perDomain" else "adding most"
            text += f" ({label}: {adding})"
        return text


@dataclass(frozen=True)
class PolicyReport:
    """Every rule on one host, and whether the host's plan is refused."""

    enforcement: str
    rules: tuple[RuleResult, ...]

    @property
    def violations(self) -> tuple[RuleResult, ...]:
        """Rules the plan breaks (fails afterwards and the plan raised its usage)."""
        return tuple(rule for rule in self.rules if rule.raised)

    @property
    def refused(self) -> bool:
        """Refused: a violation under ``enforcement: enforce`` (``warn`` only reports)."""
        return self.enforcement == "enforce" and bool(self.violations)


# ------------------------------------------------------------------------------------ simulation


def claim_after(current: Usage | None, action: Action) -> Usage | None:
    """A domain's claim after one action on it (None: not defined)."""
    match action.kind:
        case ActionKind.DEFINE:
            assert action.spec is not None
            return Usage.of(action.spec, active=False)
        case ActionKind.UPDATE if action.spec is not None and current is not None:
            return Usage.of(action.spec, active=current.active)
        case ActionKind.BALLOON if current is not None and action.config_memory is not None:
            return replace(current, current_memory=action.config_memory)
        case ActionKind.START if current is not None:
            return replace(current, active=True)
        case ActionKind.STOP if current is not None:
            return replace(current, active=False)
        case ActionKind.UNDEFINE:
            return None
        case ActionKind.MOVE:
            return Usage.of(action.spec, active=False) if action.spec is not None else None
    return current  # an autostart-only update claims nothing new


def step(state: HostState, action: Action) -> dict[str, Usage]:
    """The host state after one action (what define, update, balloon, start, stop, undefine claim)."""
    after = dict(state)
    claim = claim_after(after.pop(action.domain, None), action)
    if claim is not None:
        after[action.domain] = claim
    return after


# ----------------------------------------------------------------------------------------- rules


#: The rules whose usage is a sum over the domains, in the order :func:`contributions` gives them.
SUMMED = ("cpu.total", "memory.commit", "memory.balloon")


def contributions(claim: Usage | None, policy: Overcommit) -> tuple[int, int, int]:
    """What one domain adds to each summed rule, in :data:`SUMMED` order (one call per claim: a plan
    of thousands of actions asks for every claim it changes)."""
    if claim is None:
        return 0, 0, 0
    counted = claim.active or policy.cpu.count_inactive
    return (
        claim.vcpus if counted else 0,
        claim.memory if counted else 0,
        claim.current_memory if claim.active else 0,
    )


def contribution(rule: str, claim: Usage | None, policy: Overcommit) -> int:
    """What one domain adds to a summed rule (cpu.total, memory.commit, memory.balloon)."""
    if rule not in SUMMED:
        raise ValueError(f"{rule!r} is not a summed rule")
    return contributions(claim, policy)[SUMMED.index(rule)]


def usage(rule: str, state: HostState, policy: Overcommit) -> int:
    """A rule's usage in a state (cpu.perDomain: the widest domain)."""
    if rule == "cpu.perDomain":
        return max((claim.vcpus for claim in state.values()), default=0)
    return sum(contribution(rule, claim, policy) for claim in state.values())


def limit(rule: str, facts: HostFacts, policy: Overcommit) -> tuple[int, str]:
    """A rule's limit, and the arithmetic that produced it, for messages."""
    cpus = facts.cpus
    usable = max(facts.memory - policy.memory.reserved, 0)
    reserved = human_size(policy.memory.reserved)
    match rule:
        case "cpu.total":
            value = math.floor(Decimal(cpus) * Decimal(str(policy.cpu.ratio)))
            return value, f"floor({cpus} CPUs × {policy.cpu.ratio:g}) = {value}"
        case "cpu.perDomain":
            if policy.cpu.max_vcpus_per_domain is not None:
                value = policy.cpu.max_vcpus_per_domain
                return value, f"maxVcpusPerDomain {value}"
            return cpus, f"{cpus} host CPUs"
        case "memory.commit":
            value = math.floor(Decimal(usable) * Decimal(str(policy.memory.ratio)))
            arithmetic = f"({human_size(facts.memory)} − {reserved} reserved) × {policy.memory.ratio:g}"
            return value, f"{arithmetic} = {human_size(value)}"
        case "memory.balloon":
            value, terms = usable, [f"{human_size(facts.memory)} − {reserved} reserved"]
            if policy.memory.count_swap:
                value += facts.swap
                terms.append(f"{human_size(facts.swap)} swap")
            if policy.memory.count_ksm:
                value += facts.ksm_saved
                terms.append(f"{human_size(facts.ksm_saved)} KSM savings")
            return value, f"{' + '.join(terms)} = {human_size(value)}"
    raise ValueError(f"unknown rule {rule!r}")


def evaluate(
    policy: Overcommit, facts: HostFacts, before: HostState, actions: Iterable[Action]
) -> PolicyReport:
    """Every rule before, after and at the peak of applying ``actions`` in order; which ones break.

    Usage is updated by each action's difference, so a plan of thousands of actions on a host of
    thousands of domains costs one pass over each, not one over the host per action.
    """
    state = dict(before)
    first = {rule: usage(rule, state, policy) for rule in RULES}
    totals, peaks = dict(first), dict(first)
    for action in actions:
        old = state.pop(action.domain, None)
        new = claim_after(old, action)
        if new is not None:
            state[action.domain] = new
            peaks["cpu.perDomain"] = max(peaks["cpu.perDomain"], new.vcpus)
        for rule, added, removed in zip(
            SUMMED, contributions(new, policy), contributions(old, policy), strict=True
        ):
            totals[rule] += added - removed
            peaks[rule] = max(peaks[rule], totals[rule])
    totals["cpu.perDomain"] = usage("cpu.perDomain", state, policy)
    results = []
    for rule in RULES:
        value, arithmetic = limit(rule, facts, policy)
        if rule == "cpu.perDomain":
            # Per domain: a domain this plan defines or widens beyond the limit breaks the rule.
            offenders = tuple(
                (name, claim.vcpus)
                for name, claim in state.items()
                if claim.vcpus > value and claim.vcpus > (before[name].vcpus if name in before else 0)
            )
            raised, contributors = bool(offenders), offenders
        else:
            raised = totals[rule] > value and totals[rule] > first[rule]
            contributors = _top_contributors(rule, before, state, policy) if raised else ()
        results.append(
            RuleResult(
                rule=rule,
                unit="bytes" if rule.startswith("memory") else "vCPUs",
                before=first[rule],
                after=totals[rule],
                peak=peaks[rule],
                limit=value,
                arithmetic=arithmetic,
                raised=raised,
                contributors=contributors if raised else (),
            )
        )
    return PolicyReport(enforcement=policy.enforcement, rules=tuple(results))


def _top_contributors(
    rule: str, before: HostState, after: HostState, policy: Overcommit
) -> tuple[tuple[str, int], ...]:
    """The domains whose claim on a summed rule grew most, largest first (only a broken rule names
    them: on a host of thousands of domains, the search is not worth making for a rule that holds)."""
    deltas = (
        (name, contribution(rule, after.get(name), policy) - contribution(rule, before.get(name), policy))
        for name in after.keys() | before.keys()
    )
    return tuple(sorted(((n, d) for n, d in deltas if d > 0), key=lambda item: (-item[1], item[0])))[
        :TOP_CONTRIBUTORS
    ]
