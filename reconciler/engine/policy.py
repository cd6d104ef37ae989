"""Overcommit policy (docs/design.md §4): usage arithmetic, limits, and which plans are refused (pure).

For a host with ``C`` CPUs, memory ``M`` and ``R`` reserved, evaluated on the state a plan leaves:

* ``cpu.total``       sum of vCPUs            <= floor(C x cpu.ratio)
* ``cpu.perDomain``   vCPUs of each domain    <= maxVcpusPerDomain (default C)
* ``memory.commit``   sum of maximum memory   <= (M - R) x memory.ratio
* ``memory.balloon``  sum of current memory of running domains <= (M - R) + swap + KSM savings
* ``storage.commit[P]`` sum of the virtual sizes of every volume in pool P <= its capacity x ratio
* ``storage.free[P]``   what pool P has allocated, plus what the plan's new volumes and growth
  allocate at once <= what it has allocated + what it has available now

Every domain counts, managed or not; shut-off ones only while ``cpu.countInactive`` (for cpu.total
and memory.commit alike, as docs/design.md §4.2 counts memory.commit "like cpu.total"). A plan is refused
when a rule fails afterwards *and* the plan raised that rule's usage, so a plan that keeps or lowers
usage on an overloaded host is always allowed.

The host state after each action is simulated with :func:`step`, which also gives the peak usage
reached while the plan is applied in order (it never exceeds the larger of before and after).

The storage rules are judged for each pool a Pool manifest names on the host (every volume in it
counts, whoever uses it): the plan's volume actions (``Action.volume``) change what it holds. Pools
known to share one filesystem (:attr:`PoolObservation.filesystem`) share its space: each one's rules
count the volumes and actions of all of them. A pool that does not run yet (this plan defines or
starts it) has no figures libvirt can report: a dir pool on this machine is judged on the filesystem
of its folder (:func:`estimated_pools`), any other is *unchecked* (:attr:`PolicyReport.unchecked`).
Either way its rules are judged again during the apply, once the pool phase made it run and before
any volume is made (:func:`recheck_storage`, :attr:`PolicyReport.pending_pools`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal

from reconciler.engine.actions import Action, ActionKind
from reconciler.engine.hypervisor import HostObservation, PoolObservation, SpaceFact
from reconciler.engine.usage import HostState, Usage
from reconciler.spec.hostpolicy import Capacity, Overcommit
from reconciler.spec.sizes import human_size
from reconciler.spec.storage import Pool

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
    """A host's overcommit policy and the capacity its manifest sets (overriding what is observed),
    and the storage overcommit ratio of each pool its Pool manifests name."""

    capacity: Capacity
    overcommit: Overcommit
    pools: Mapping[str, float] = field(default_factory=dict)

    def judge(
        self,
        observed: HostObservation,
        before: HostState,
        actions: Iterable[Action],
        estimates: Mapping[str, PoolObservation] | None = None,
    ) -> PolicyReport:
        """Every rule on the state ``actions`` leave, with the facts observed on the host (and the
        ``estimates`` of pools that do not run yet: :func:`estimated_pools`)."""
        facts = host_facts(
            self.capacity,
            cpus=observed.cpus,
            memory=observed.memory,
            swap=observed.swap,
            ksm_saved=observed.ksm_saved,
        )
        actions = list(actions)
        report = evaluate(self.overcommit, facts, before, actions)
        if not self.pools:
            return report
        rules, unchecked = storage_rules(observed.pools, self.pools, actions, estimates or {})
        running = {pool.name for pool in observed.pools if pool.active}
        pending = {name: ratio for name, ratio in self.pools.items() if name not in running}
        return replace(
            report, rules=report.rules + tuple(rules), unchecked=tuple(unchecked), pending_pools=pending
        )


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
    unchecked: tuple[str, ...] = ()  # rules that could not be judged, and why (a pool not running yet)
    #: The pools (name: overcommit ratio) that did not run when the plan was made: their storage
    #: rules are judged again once the apply's pool phase made them run (:func:`recheck_storage`).
    pending_pools: Mapping[str, float] = field(default_factory=dict)

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


# --------------------------------------------------------------------------------------- storage


def storage_rules(
    pools: Sequence[PoolObservation],
    ratios: Mapping[str, float],
    actions: Sequence[Action],
    estimates: Mapping[str, PoolObservation] | None = None,
) -> tuple[list[RuleResult], list[str]]:
    """``storage.commit[P]`` and ``storage.free[P]`` for each pool of ``ratios`` (the Pool manifests
    of the host), with what could not be judged: a pool that is missing or not running, without an
    estimate of its figures."""
    seen = {pool.name: pool for pool in pools}
    judged: dict[str, PoolObservation] = {}
    unchecked: list[str] = []
    for name in ratios:
        pool = seen.get(name)
        if pool is not None and pool.active:
            judged[name] = pool
        elif estimates and name in estimates:
            judged[name] = estimates[name]
        else:
            why = "does not exist yet" if pool is None else "is not running"
            unchecked.append(
                f"storage.commit[{name}], storage.free[{name}]: not checked: the pool {why} (this plan "
                "makes it run), so libvirt reports no figures for it yet; judged during the apply, once "
                "it runs and before any volume is made"
            )
    running = {pool.name: pool for pool in pools if pool.active} | judged
    results: list[RuleResult] = []
    for name, pool in judged.items():
        group = sharing(pool, running.values())
        names = {member.name for member in group}
        mine = [a for a in actions if a.volume is not None and a.volume.pool in names]
        estimated = pool is not seen.get(name)
        results += [
            _storage_commit(ratios[name], group, mine, estimated),
            _storage_free(group, mine, estimated),
        ]
    return results, unchecked


def sharing(pool: PoolObservation, pools: Iterable[PoolObservation]) -> list[PoolObservation]:
    """``pool`` first, then every other pool known to be on the same filesystem (their space is one)."""
    if not pool.filesystem:
        return [pool]
    return [pool, *(p for p in pools if p.name != pool.name and p.filesystem == pool.filesystem)]


def estimated_pools(
    wanted: Mapping[str, Pool], observed: Sequence[PoolObservation], space: Mapping[str, SpaceFact]
) -> dict[str, PoolObservation]:
    """Each dir Pool that does not run yet, with the figures libvirt will report for it (those of
    the filesystem of its folder, as ``space`` gives them: known for a host that is this machine),
    and no volumes: files already in its folder are counted only by the apply's re-check."""
    running = {pool.name for pool in observed if pool.active}
    found = {}
    for name, pool in wanted.items():
        fact = space.get(pool.target) if pool.spec.type == "dir" else None
        if fact is not None and name not in running:
            figures = (fact.capacity, fact.capacity - fact.available, fact.available)  # as libvirt counts
            found[name] = PoolObservation(
                name, "dir", pool.target, True, False, *figures, filesystem=fact.filesystem
            )
    return found


def recheck_storage(
    report: PolicyReport, pools: Sequence[PoolObservation], actions: Sequence[Action]
) -> tuple[RuleResult, ...]:
    """The storage rules of the pools that did not run when the plan was made, judged on the pools
    as they are once the apply's pool phase made them run, with the actions still to come: the
    violations that refuse those actions (none under ``enforcement: warn``)."""
    if not report.pending_pools or report.enforcement != "enforce":
        return ()
    rules, _ = storage_rules(pools, report.pending_pools, actions)
    return tuple(rule for rule in rules if rule.raised)


def _whose(group: Sequence[PoolObservation], estimated: bool) -> str:
    """Whose figures a storage rule's limit is, for its arithmetic."""
    if estimated:
        return f"the filesystem holding {group[0].target} (estimated: the pool does not run yet)"
    if len(group) > 1:
        return f"the filesystem pools {', '.join(sorted(p.name for p in group))} share"
    return "the pool's filesystem" if group[0].type in ("dir", "fs", "netfs") else "the pool"


def _storage_commit(
    ratio: float, group: Sequence[PoolObservation], actions: Sequence[Action], estimated: bool
) -> RuleResult:
    """The virtual sizes of every volume of the pool (and the pools sharing its filesystem) against
    its capacity times its ratio."""
    pool = group[0]
    sizes = {volume.path or f"{p.name}/{volume.name}": volume.capacity for p in group for volume in p.volumes}
    before = sum(sizes.values())
    total = peak = before
    added: dict[str, int] = {}
    for action in actions:
        assert action.volume is not None
        delta = _virtual_delta(action)
        total += delta
        peak = max(peak, total)
        added[action.domain] = added.get(action.domain, 0) + delta
    value = math.floor(Decimal(pool.capacity) * Decimal(str(ratio)))
    whose = (
        "pool capacity" if len(group) == 1 and not estimated else f"capacity of {_whose(group, estimated)}"
    )
    arithmetic = f"{human_size(pool.capacity)} {whose} × {ratio:g} = {human_size(value)}"
    return _storage_result(f"storage.commit[{pool.name}]", (before, total, peak), (value, arithmetic), added)


def _virtual_delta(action: Action) -> int:
    """How much a volume action changes the virtual sizes a pool promises."""
    volume = action.volume
    assert volume is not None
    match action.kind:
        case ActionKind.CREATE_VOLUME:
            return volume.capacity
        case ActionKind.RESIZE_VOLUME:
            return volume.capacity - volume.previous
        case ActionKind.DELETE_VOLUME:
            return -volume.previous
        case ActionKind.RESEED:  # a cloud-init seed made, or made again at its new size
            return volume.capacity - volume.previous
    return 0


#: Volume actions that take pool space at once (their ``allocation``).
_ALLOCATING = frozenset({ActionKind.CREATE_VOLUME, ActionKind.RESIZE_VOLUME, ActionKind.RESEED})


def _storage_free(group: Sequence[PoolObservation], actions: Sequence[Action], estimated: bool) -> RuleResult:
    """What the plan's new volumes and growth allocate at once (in the pool and the pools sharing its
    filesystem) against what is free there now (a deletion's space is not counted on: the check is
    on the space there is). Its usage is what libvirt reports in use: for a dir pool, everything on
    its filesystem, not only the pool's volumes."""
    pool = group[0]
    before = pool.allocation
    added: dict[str, int] = {}
    for action in actions:
        assert action.volume is not None
        if action.kind in _ALLOCATING and action.volume.allocation:
            added[action.domain] = added.get(action.domain, 0) + action.volume.allocation
    after = before + sum(added.values())
    value = pool.allocation + pool.available
    arithmetic = (
        f"{human_size(pool.allocation)} in use + {human_size(pool.available)} free on "
        f"{_whose(group, estimated)} = {human_size(value)}"
    )
    return _storage_result(f"storage.free[{pool.name}]", (before, after, after), (value, arithmetic), added)


def _storage_result(
    rule: str, usage: tuple[int, int, int], bound: tuple[int, str], added: Mapping[str, int]
) -> RuleResult:
    """A storage rule's result from its usage (before, after, peak) and its limit (value, arithmetic);
    refused by the same test as the others: over the limit afterwards, and raised by the plan."""
    before, after, peak = usage
    value, arithmetic = bound
    raised = after > value and after > before
    contributors = sorted(((n, d) for n, d in added.items() if d > 0), key=lambda item: (-item[1], item[0]))
    return RuleResult(
        rule=rule,
        unit="bytes",
        before=before,
        after=after,
        peak=peak,
        limit=value,
        arithmetic=arithmetic,
        raised=raised,
        contributors=tuple(contributors[:TOP_CONTRIBUTORS]) if raised else (),
    )
