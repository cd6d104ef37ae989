"""Each domain's sync state and health on one host, from its plan and the apply's results (pure).

``/status``, the plan's JSON document and the daemon's metrics all show, per managed domain, how it
stands against git (``sync``) and how it runs (``health``), with a one-line ``message``. One domain
is in one sync state; when several apply, the first of :data:`PRECEDENCE` wins:

1. ``error``: its action failed, it is a conflict or held, its XML cannot be read, or the host
   could not be planned or is blocked by an error while it has an action;
2. ``suspended``: a suspend annotation (its own or its host's) leaves it alone on purpose;
3. ``refused``: it has an action and the overcommit policy refused the host's plan;
4. ``orphan``: managed, no longer in git, and kept (or not undefined yet);
5. ``outOfSync``: an action is planned and was not applied (a plan only, or deferred by a sync
   window);
6. ``pendingRestart``: its definition changed while it ran and waits for a restart;
7. ``synced``: nothing to do.

An error outranks everything because it needs a person; a suspension explains why nothing else is
done; a refusal says why a planned action did not happen; an orphan says more than "out of sync"
about a domain git no longer names.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from reconciler.engine.actions import Action, ActionKind, Conflict, Held, Orphan
from reconciler.engine.apply import ActionResult
from reconciler.engine.hypervisor import DomainObservation
from reconciler.engine.plan import HostPlan, carries_owner


class Sync(StrEnum):
    """How a domain stands against git."""

    SYNCED = "synced"
    OUT_OF_SYNC = "outOfSync"
    ORPHAN = "orphan"
    PENDING_RESTART = "pendingRestart"
    REFUSED = "refused"
    SUSPENDED = "suspended"
    ERROR = "error"


class Health(StrEnum):
    """How a domain runs, as libvirt last reported it (or as the apply left it)."""

    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    MISSING = "missing"  # wanted, not defined on the host
    UNKNOWN = "unknown"  # the host could not be observed, or a state libvirt gave no name to


#: Strongest first: the state a domain shows when several apply (see the module's docstring).
PRECEDENCE = (
    Sync.ERROR,
    Sync.SUSPENDED,
    Sync.REFUSED,
    Sync.ORPHAN,
    Sync.OUT_OF_SYNC,
    Sync.PENDING_RESTART,
    Sync.SYNCED,
)

#: libvirt's lifecycle states by the health they mean ("blocked" runs; "shutdown" is on its way off).
_HEALTH_OF_STATE = {
    "running": Health.RUNNING,
    "blocked": Health.RUNNING,
    "shutdown": Health.RUNNING,
    "paused": Health.PAUSED,
    "pmsuspended": Health.PAUSED,
    "shutoff": Health.SHUTOFF,
    "crashed": Health.CRASHED,
}


@dataclass(frozen=True)
class DomainState:
    """One domain's sync state, health and why (``message``, "" when synced)."""

    sync: Sync
    health: Health
    message: str = ""

    def document(self) -> dict[str, str]:
        """``{sync, health, message}`` as ``/status`` and the plan's JSON show it."""
        return {"sync": self.sync.value, "health": self.health.value, "message": self.message}


def domain_states(
    plan: HostPlan, results: Sequence[ActionResult] = (), wanted: Iterable[str] = ()
) -> dict[str, DomainState]:
    """Every managed domain of the host by name (sorted), with its sync state and health.

    ``results`` are the apply's (empty for a plan only). The domains are those the plan saw as
    managed, those it acts on, reports or leaves alone, and ``wanted`` (the manifests' domains for
    this host: they show even when the host could not be observed). A domain the apply undefined
    or moved away is no longer on the host and is left out.
    """
    facts = _Facts.of(plan, results)
    gone = {r.action.domain for r in results if r.ok and r.action.releases}
    names = (facts.managed() | set(wanted)) - gone
    return {name: _state_of(facts.about(name)) for name in sorted(names)}


def sync_counts(states: Mapping[str, DomainState]) -> dict[Sync, int]:
    """How many domains are in each sync state (every state present, zeros included)."""
    counts = dict.fromkeys(Sync, 0)
    for state in states.values():
        counts[state.sync] += 1
    return counts


# ------------------------------------------------------------------------------------ the domains


@dataclass(frozen=True)
class _Seen:
    """What the plan and the apply say about one domain: what each sync state is judged from."""

    name: str
    plan: HostPlan
    live: DomainObservation | None  # as observed (None: not on the host, or the host not seen)
    actions: tuple[Action, ...]  # planned for it
    done: tuple[ActionResult, ...]  # carried out for it (ok or failed)
    orphan: Orphan | None
    conflict: Conflict | None
    held: Held | None
    suspended: bool  # left alone by a suspend annotation
    pending_restart: bool  # observed waiting for a restart (an earlier apply's update)

    @property
    def waiting(self) -> tuple[Action, ...]:
        """Its planned actions the apply did not carry out."""
        applied = [result.action for result in self.done if result.ok]  # actions need not hash
        return tuple(action for action in self.actions if action not in applied)


@dataclass(frozen=True)
class _Facts:
    """A host's plan and results indexed by domain, so every domain is judged in constant time."""

    plan: HostPlan
    observed: dict[str, DomainObservation]
    actions: dict[str, list[Action]]
    done: dict[str, list[ActionResult]]
    orphans: dict[str, Orphan]
    conflicts: dict[str, Conflict]
    held: dict[str, Held]
    suspended: frozenset[str]
    pending_restarts: frozenset[str]

    @classmethod
    def of(cls, plan: HostPlan, results: Sequence[ActionResult]) -> _Facts:
        actions: dict[str, list[Action]] = defaultdict(list)
        for action in plan.actions:
            if action.kind is not ActionKind.POOL:  # a pool action names a pool, not a domain
                actions[action.domain].append(action)
        done: dict[str, list[ActionResult]] = defaultdict(list)
        for result in results:
            if result.action.kind is not ActionKind.POOL:
                done[result.action.domain].append(result)
        return cls(
            plan,
            {live.name: live for live in (plan.observed.domains if plan.observed is not None else ())},
            actions,
            done,
            {orphan.domain: orphan for orphan in plan.orphans},
            {conflict.domain: conflict for conflict in plan.conflicts},
            {held.domain: held for held in plan.held},
            frozenset(plan.suspended),
            frozenset(plan.pending_restarts),
        )

    def managed(self) -> set[str]:
        """Every domain the plan knows as ours: observed with our mark, acted on, reported, left alone."""
        marked = {name for name, live in self.observed.items() if carries_owner(live.xml)}
        return marked.union(
            self.actions,
            self.orphans,
            self.conflicts,
            self.held,
            self.plan.suspended,
            self.plan.pending_restarts,
        )

    def about(self, name: str) -> _Seen:
        return _Seen(
            name,
            self.plan,
            self.observed.get(name),
            tuple(self.actions.get(name, ())),
            tuple(self.done.get(name, ())),
            self.orphans.get(name),
            self.conflicts.get(name),
            self.held.get(name),
            name in self.suspended,
            name in self.pending_restarts,
        )


def _state_of(seen: _Seen) -> DomainState:
    """One domain's state: the first sync state of :data:`PRECEDENCE` that holds, its health."""
    health = _health(seen)
    for sync in PRECEDENCE:
        message = _REASONS[sync](seen)
        if message is not None:
            return DomainState(sync, health, message)
    raise AssertionError("synced always holds")  # pragma: no cover


def _error(seen: _Seen) -> str | None:
    """Why the domain is in error: its failed action, a conflict, a hold, an error naming it, or a
    host-wide error (unreachable, a mass deletion) that stopped its action; None when none is."""
    plan = seen.plan
    failed = next((r for r in seen.done if not r.ok), None)
    if failed is not None:
        return f"{failed.action.kind.value} failed: {failed.detail}"
    if seen.conflict is not None:
        return f"conflict: {seen.conflict.reason}"
    if seen.held is not None:
        return f"held: {seen.held.reason}"
    own = [error for error in plan.errors if _names(error, seen.name)]
    if own:
        return "; ".join(own)
    if plan.host_error is not None:
        return str(plan.host_error)
    if seen.waiting and (plan.errors or plan.conflicts):
        blockers = [*plan.errors, *(f"conflict: {c.domain}" for c in plan.conflicts)]
        return "not applied, the host is blocked: " + "; ".join(blockers)
    return None


def _suspended(seen: _Seen) -> str | None:
    if not seen.suspended:
        return None
    return "left alone: a suspend annotation (its own or its host's)"


def _refused(seen: _Seen) -> str | None:
    policy = seen.plan.policy
    if not (seen.waiting and seen.plan.refused and policy is not None):
        return None
    return "refused by the overcommit policy: " + "; ".join(rule.message() for rule in policy.violations)


def _orphan(seen: _Seen) -> str | None:
    if seen.orphan is None:
        return None
    if seen.orphan.delete:
        return "no longer in git: undefine planned"
    return f"no longer in git, kept: {seen.orphan.reason}"


def _out_of_sync(seen: _Seen) -> str | None:
    if not seen.waiting:
        return None
    planned = ", ".join(_describe(action) for action in seen.waiting)
    return f"{planned}; waits: {seen.plan.deferred}" if seen.plan.deferred else planned


def _pending_restart(seen: _Seen) -> str | None:
    updated = [result.action for result in seen.done if result.ok and result.action.restart]
    if not (seen.pending_restart or updated):
        return None
    waits = seen.plan.restart_waits.get(seen.name, "") or "; ".join(
        f"{c.field} {c.before} → {c.after}" for action in updated for c in action.changes
    )
    return "takes effect at the next restart" + (f": {waits}" if waits else "")


def _synced(_seen: _Seen) -> str | None:
    return ""


#: How each sync state is told, in :data:`PRECEDENCE` order: its message, or None when it does not hold.
_REASONS: dict[Sync, Callable[[_Seen], str | None]] = {
    Sync.ERROR: _error,
    Sync.SUSPENDED: _suspended,
    Sync.REFUSED: _refused,
    Sync.ORPHAN: _orphan,
    Sync.OUT_OF_SYNC: _out_of_sync,
    Sync.PENDING_RESTART: _pending_restart,
    Sync.SYNCED: _synced,
}


def _names(error: str, domain: str) -> bool:
    """Whether a plan error is about ``domain``: the planner names a domain as ``'NAME'`` or, in a
    pre-flight finding, starts with ``NAME:``."""
    return repr(domain) in error or error.startswith(f"{domain}: ")


def _describe(action: Action) -> str:
    """A planned action in a few words: ``update planned (vcpus 1 → 2)``."""
    changes = ", ".join(f"{c.field} {c.before} → {c.after}" for c in action.changes[:3])
    more = f", +{len(action.changes) - 3} more" if len(action.changes) > 3 else ""
    return f"{action.kind.value} planned ({changes}{more})" if changes else f"{action.kind.value} planned"


# ----------------------------------------------------------------------------------------- health


def _health(seen: _Seen) -> Health:
    """How the domain runs: as the apply left it when a lifecycle action of its succeeded, else as
    observed; ``missing`` when the host was seen without it, ``unknown`` when it was not seen."""
    after = _health_after(seen.done)
    if after is not None:
        return after
    if seen.plan.observed is None:
        return Health.UNKNOWN
    return Health.MISSING if seen.live is None else observed_health(seen.live)


def _health_after(done: Sequence[ActionResult]) -> Health | None:
    """The run state the last successful start, stop or define left, or None without one."""
    health: Health | None = None
    for result in done:
        if not result.ok:
            continue
        if result.action.kind is ActionKind.START:
            health = Health.RUNNING
        elif result.action.kind is ActionKind.STOP:
            health = Health.SHUTOFF
        elif result.action.kind is ActionKind.DEFINE or result.action.moves_in:
            health = Health.SHUTOFF  # defined off; a START result after it says running
    return health


def observed_health(live: DomainObservation) -> Health:
    """A domain's health from libvirt's lifecycle state (its active flag when no state was read)."""
    if not live.state:
        return Health.RUNNING if live.active else Health.SHUTOFF
    return _HEALTH_OF_STATE.get(live.state, Health.UNKNOWN)
