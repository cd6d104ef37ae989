"""Execute a host's plan through a Hypervisor, in the plan's shrink-before-grow order.

A failing action stops the host's apply after its phase: later actions may depend on it (a start
after a define). Everything done so far stays done, as on a real host; the next run re-plans from the
state it finds, which is how a crash mid-apply is recovered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from reconciler.engine.actions import Action, ActionKind, Phase
from reconciler.engine.execute import execute_action
from reconciler.engine.fleet import EachHost, one_by_one
from reconciler.engine.hypervisor import Hypervisor
from reconciler.engine.plan import HostPlan
from reconciler.engine.policy import recheck_storage
from reconciler.errors import HostError


@dataclass(frozen=True)
class ActionResult:
    """How one action went: ``detail`` says what happened (e.g. shut down or forced off); a failed
    action keeps its ``error``, whose class says whether a retry may help."""

    action: Action
    ok: bool
    detail: str
    seconds: float
    error: HostError | None = None
    #: Not done because the storage rules of the pools it had to make refused the host's plan.
    refused: bool = False


DEFAULT_WORKERS = 8


@dataclass(frozen=True)
class ApplySettings:
    """How actions are carried out: the graceful-shutdown timeout (s), the actions in flight, and
    the domains of a host restarting at once (``--max-unavailable``, which ``workers`` does not cap:
    restarts are waits on guests, not work on the host)."""

    shutdown_timeout: float = 60.0
    workers: int = DEFAULT_WORKERS
    max_unavailable: int = 1


@dataclass(frozen=True)
class Hooks:
    """What a caller watches or controls while a pass runs (all optional).

    ``on_plan`` sees each host's plan before it is applied, ``on_result`` each action's result as it
    ends, and ``stop`` (the daemon's SIGTERM) lets actions in flight finish and starts no new one.
    """

    on_plan: Callable[[HostPlan], None] | None = None
    on_result: Callable[[ActionResult], None] | None = None
    stop: threading.Event | None = None
    #: Asked once, before anything is applied, when the plans undefine or move domains away (the
    #: CLI asks on a terminal); False applies nothing. None: no question.
    confirm: Callable[[Sequence[Action]], bool] | None = None
    #: Called when a host's part of an apply stage has ended (set by :class:`InOrder`).
    on_host_done: Callable[[], None] | None = None

    @property
    def stopped(self) -> bool:
        """Whether the caller asked to stop."""
        return self.stop is not None and self.stop.is_set()

    def finished(self) -> None:
        """Say that this host's part of the stage has ended."""
        if self.on_host_done is not None:
            self.on_host_done()


class InOrder:
    """Passes results of hosts worked side by side to the caller's ``on_result`` grouped by host, in
    a fixed order: the first unfinished host's results pass at once, later hosts' wait their turn,
    so output reads as if the hosts were applied one after another."""

    def __init__(self, order: Sequence[str], hooks: Hooks) -> None:
        self._order = list(order)
        self._hooks = hooks
        self._lock = threading.Lock()
        self._waiting: dict[str, list[ActionResult]] = {host: [] for host in order}
        self._done: set[str] = set()
        self._turn = 0  # index in the order of the host whose results pass at once

    def hooks(self, host: str) -> Hooks:
        """The hooks one host's work runs with."""
        if self._hooks.on_result is None:
            return self._hooks
        return replace(
            self._hooks,
            on_result=lambda result: self._result(host, result),
            on_host_done=lambda: self._finished(host),
        )

    def _result(self, host: str, result: ActionResult) -> None:
        with self._lock:
            if self._order[self._turn] == host:
                self._pass(result)
            else:
                self._waiting[host].append(result)

    def _finished(self, host: str) -> None:
        with self._lock:
            self._done.add(host)
            while self._turn < len(self._order) and self._order[self._turn] in self._done:
                self._turn += 1
                if self._turn < len(self._order):
                    for result in self._waiting.pop(self._order[self._turn]):
                        self._pass(result)

    def _pass(self, result: ActionResult) -> None:
        assert self._hooks.on_result is not None
        self._hooks.on_result(result)


DEFAULT_SETTINGS = ApplySettings()
NO_HOOKS = Hooks()


#: Phases that free resources (apply them on every host before any host grows: a move's target is
#: defined only after its source let go).
SHRINK = frozenset(phase for phase in Phase if phase <= Phase.UPDATE_SHRINK)


def apply_host_plan(
    hypervisor: Hypervisor,
    plan: HostPlan,
    settings: ApplySettings = DEFAULT_SETTINGS,
    hooks: Hooks = NO_HOOKS,
) -> list[ActionResult]:
    """Run ``plan`` phase by phase; stop after the first phase with a failure. Blocked plans do nothing."""
    if plan.blocked:
        return []
    results, rest = _judge_new_pools(hypervisor, plan, settings, hooks)
    return results if rest is None else results + run_actions(hypervisor, rest.actions, settings, hooks)


def _judge_new_pools(
    hypervisor: Hypervisor, plan: HostPlan, settings: ApplySettings, hooks: Hooks
) -> tuple[list[ActionResult], HostPlan | None]:
    """When the plan's pools did not run as it was made (their storage rules judged on an estimate,
    or not at all), make them run before anything else (they only add), then judge those rules on the
    pools as they are: the plan's other actions (None when the host goes no further) to run next.
    A refusal changes nothing else on the host."""
    if not _waits_for_pools(plan):
        return [], plan
    pools = [action for action in plan.actions if action.kind is ActionKind.POOL]
    results = run_actions(hypervisor, pools, settings, hooks)
    rest = [action for action in plan.actions if action.kind is not ActionKind.POOL]
    if hooks.stopped or any(not result.ok for result in results):
        return results, None
    assert plan.policy is not None
    try:
        broken = recheck_storage(plan.policy, hypervisor.observe().pools, rest)
    except HostError as err:
        why = f"not done: the storage rules could not be judged once the pools ran: {err}"
        return results + [_not_done(action, why, hooks, error=err) for action in rest], None
    if broken:
        why = "refused by policy once the pools ran: " + "; ".join(rule.message() for rule in broken)
        return results + [_not_done(action, why, hooks, refused=True) for action in rest], None
    return results, replace(plan, actions=tuple(rest))


def apply_fleet(
    sessions: Mapping[str, Hypervisor],
    plans: Mapping[str, HostPlan],
    settings: ApplySettings = DEFAULT_SETTINGS,
    hooks: Hooks = NO_HOOKS,
    *,
    each_host: EachHost[list[ActionResult]] = one_by_one,
) -> dict[str, list[ActionResult]]:
    """Apply several hosts' plans side by side, each host shrinking (undefines, stops, moves out)
    before it grows (defines, moves in, starts); a host that failed while shrinking does not grow.

    A host that moves no domain in or out shrinks and grows at once: it waits for no other host,
    and none waits for it. The hosts of a move shrink first; once every host's first part is over,
    they grow: a move's target half runs only when its source half succeeded, so a domain never
    runs on two hosts. ``hooks.on_result`` sees the results grouped by host, in the order of
    ``plans`` (the movers' growth after every host's first part).
    """
    judged, plans = _new_pools_first(sessions, plans, settings, hooks, each_host)
    order = [host for host in plans if host in sessions]
    movers = {host for host in order for a in plans[host].actions if a.kind is ActionKind.MOVE}

    def first(host: str, seen: Hooks) -> list[ActionResult]:
        done = _shrink(sessions[host], plans[host], plans, settings, seen)
        if host not in movers and _may_grow(plans[host], done, hooks):
            done += _grow(sessions[host], plans[host], set(), settings, seen)
        return done

    results = _stage(order, hooks, each_host, first)
    for host, done in judged.items():
        results[host] = done + results.get(host, [])
    released = {
        (r.action.host, r.action.domain)
        for done in results.values()
        for r in done
        if r.ok and r.action.releases
    }
    growing = [host for host in order if host in movers and _may_grow(plans[host], results[host], hooks)]

    def second(host: str, seen: Hooks) -> list[ActionResult]:
        return _grow(sessions[host], plans[host], released, settings, seen)

    for host, done in _stage(growing, hooks, each_host, second).items():
        results[host] += done
    return results


def _stage(
    order: Sequence[str],
    hooks: Hooks,
    each_host: EachHost[list[ActionResult]],
    work: Callable[[str, Hooks], list[ActionResult]],
) -> dict[str, list[ActionResult]]:
    """One stage of a fleet apply: ``work`` on each host of ``order`` side by side, the results
    passed to the caller in host order (:class:`InOrder`)."""
    in_order = InOrder(order, hooks)

    def one(host: str) -> list[ActionResult]:
        seen = in_order.hooks(host)
        try:
            return work(host, seen)
        finally:
            seen.finished()

    return each_host(order, one)


def _new_pools_first(
    sessions: Mapping[str, Hypervisor],
    plans: Mapping[str, HostPlan],
    settings: ApplySettings,
    hooks: Hooks,
    each_host: EachHost[list[ActionResult]],
) -> tuple[dict[str, list[ActionResult]], dict[str, HostPlan]]:
    """Before any host shrinks, the pools whose storage rules wait for them to run are made and the
    rules judged (:func:`_judge_new_pools`): the results so far, and the plans still to run, where a
    host that went no further is blocked (a move to it is not started, none from it is made)."""
    pending = [host for host, plan in plans.items() if host in sessions and _waits_for_pools(plan)]
    if not pending:
        return {}, dict(plans)
    rest: dict[str, HostPlan | None] = {}

    def judge(host: str, seen: Hooks) -> list[ActionResult]:
        done, rest[host] = _judge_new_pools(sessions[host], plans[host], settings, seen)
        return done

    judged = _stage(pending, hooks, each_host, judge)
    halted = {
        host: replace(plan, actions=(), errors=(*plan.errors, "stopped after its pools"))
        for host, plan in plans.items()
    }
    return judged, {host: rest.get(host, plan) or halted[host] for host, plan in plans.items()}


def _waits_for_pools(plan: HostPlan) -> bool:
    """Whether a plan makes pools whose storage rules are judged again once they run."""
    policy = plan.policy
    enforced = policy is not None and policy.enforcement == "enforce" and bool(policy.pending_pools)
    return enforced and not plan.blocked and any(a.kind is ActionKind.POOL for a in plan.actions)


def _may_grow(plan: HostPlan, shrunk: Sequence[ActionResult], hooks: Hooks) -> bool:
    """Whether a host goes on to grow: not blocked, not stopped, nothing failed while shrinking."""
    return not (plan.blocked or hooks.stopped or any(not r.ok for r in shrunk))


def _shrink(
    hypervisor: Hypervisor,
    plan: HostPlan,
    plans: Mapping[str, HostPlan],
    settings: ApplySettings,
    hooks: Hooks,
) -> list[ActionResult]:
    """One host's shrink actions, and the moves out it must not start (failed)."""
    if plan.blocked:
        return []
    shrink, orphaned = _moves_to_blocked_hosts(plan, plans)
    results = run_actions(hypervisor, shrink, settings, hooks)
    for action in orphaned:
        results.append(_not_done(action, f"not moved: {action.peer} is blocked", hooks))
    return results


def _grow(
    hypervisor: Hypervisor,
    plan: HostPlan,
    released: set[tuple[str, str]],
    settings: ApplySettings,
    hooks: Hooks,
) -> list[ActionResult]:
    """One host's grow actions: moves in whose source did not let go fail; the rest run."""
    grow, stranded = _stranded_moves(plan, released)
    results = [_not_done(a, f"not moved: {a.peer} did not release it", hooks) for a in stranded]
    return results + run_actions(hypervisor, grow, settings, hooks)


def _not_done(
    action: Action, why: str, hooks: Hooks, *, error: HostError | None = None, refused: bool = False
) -> ActionResult:
    """The result of an action not carried out, shown like any other."""
    result = ActionResult(action, False, why, 0.0, error, refused)
    if hooks.on_result is not None:
        hooks.on_result(result)
    return result


def _moves_to_blocked_hosts(
    plan: HostPlan, plans: Mapping[str, HostPlan]
) -> tuple[list[Action], list[Action]]:
    """A plan's shrink actions to run, and the moves out it must not start because the domain's new
    host is blocked or not in the run (the planner holds those; this is the last guard)."""
    run: list[Action] = []
    skipped: list[Action] = []
    for action in plan.actions:
        if action.phase not in SHRINK:
            continue
        target = plans.get(action.peer) if action.kind is ActionKind.MOVE and action.releases else None
        if action.kind is ActionKind.MOVE and action.releases and (target is None or target.blocked):
            skipped.append(action)
        else:
            run.append(action)
    return run, skipped


def _stranded_moves(plan: HostPlan, released: set[tuple[str, str]]) -> tuple[list[Action], list[Action]]:
    """A plan's grow actions, split into those to run and moves in (with their starts) whose source
    did not let the domain go."""
    stranded = {a.domain for a in plan.actions if a.moves_in and (a.peer, a.domain) not in released}
    grow: list[Action] = []
    skipped: list[Action] = []
    for action in plan.actions:
        if action.phase in SHRINK:
            continue
        (skipped if action.domain in stranded and action.kind is not ActionKind.UPDATE else grow).append(
            action
        )
    return grow, [action for action in skipped if action.moves_in]


def run_actions(
    hypervisor: Hypervisor,
    actions: Sequence[Action],
    settings: ApplySettings = DEFAULT_SETTINGS,
    hooks: Hooks = NO_HOOKS,
) -> list[ActionResult]:
    """Run actions (in apply order) phase by phase; stop after the first phase with a failure.

    Within a phase, the actions (each on a different domain) run concurrently from a pool of
    ``workers`` threads: libvirt serialises per domain, not per host, and most of the time is
    QEMU starting, stopping or answering its monitor, or a round trip to a remote libvirtd.
    Phases never overlap, and each phase moves usage one way only (it frees or it takes), so
    running a phase's actions at once never passes a state worse than the phase's end: the
    shrink-before-grow guarantee holds as in a serial apply.
    ``hooks.stop`` (the daemon's SIGTERM) lets actions in flight finish and starts no new one.
    """
    results: list[ActionResult] = []
    lock = threading.Lock()
    halted = threading.Event()  # a restart failed: the host's rolling restart begins no other

    def run(action: Action) -> ActionResult:
        started = time.monotonic()
        try:
            detail = execute_action(hypervisor, action, settings.shutdown_timeout)
            result = ActionResult(action, True, detail, time.monotonic() - started)
        except HostError as err:
            result = ActionResult(action, False, str(err), time.monotonic() - started, err)
        with lock:
            results.append(result)
            if not result.ok and action.kind is ActionKind.RESTART:
                halted.set()
            if hooks.on_result is not None:
                hooks.on_result(result)
        return result

    for group in _phases(actions):
        if hooks.stopped:
            break
        workers = settings.workers
        if group[0].kind is ActionKind.RESTART:  # a rolling restart: a few at a time, none after a failure
            workers = settings.max_unavailable  # its own limit: --parallel does not cap it
        if len(group) > 1 and workers > 1:
            with ThreadPoolExecutor(max_workers=min(workers, len(group))) as pool:
                outcomes = list(pool.map(lambda action: _unless_stopped(run, action, hooks, halted), group))
            failed = any(outcome is not None and not outcome.ok for outcome in outcomes)
        else:
            failed = False
            for action in group:
                if hooks.stopped or not run(action).ok:
                    failed = True
                    break
        if failed:
            break
    return results


def _unless_stopped(
    run: Callable[[Action], ActionResult], action: Action, hooks: Hooks, halted: threading.Event
) -> ActionResult | None:
    """Run one action of a phase run side by side, unless the caller asked to stop, or it is a
    restart and one before it failed (a domain that did not come back halts a rolling restart)."""
    if hooks.stopped or (action.kind is ActionKind.RESTART and halted.is_set()):
        return None
    return run(action)


def _phases(actions: Sequence[Action]) -> list[list[Action]]:
    """Consecutive actions of the same phase and kind (the plan is already in apply order)."""
    groups: list[list[Action]] = []
    for action in actions:
        if groups and (groups[-1][0].phase, groups[-1][0].kind) == (action.phase, action.kind):
            groups[-1].append(action)
        else:
            groups.append([action])
    return groups
