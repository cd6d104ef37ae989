"""Execute a host's plan through a Hypervisor, in the plan's shrink-before-grow order.

A failing action stops the host's apply after its phase: later actions may depend on it (a start
after a define). Everything done so far stays done, as on a real host; the next run re-plans from the
state it finds, which is how a crash mid-apply is recovered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from reconciler.engine.hypervisor import Hypervisor, StopOutcome
from reconciler.engine.plan import Action, ActionKind, HostPlan
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


DEFAULT_WORKERS = 8


@dataclass(frozen=True)
class ApplySettings:
    """How actions are carried out: the graceful-shutdown timeout (s) and the actions in flight."""

    shutdown_timeout: float = 60.0
    workers: int = DEFAULT_WORKERS


@dataclass(frozen=True)
class Hooks:
    """What a caller watches or controls while a pass runs (all optional).

    ``on_plan`` sees each host's plan before it is applied, ``on_result`` each action's result as it
    ends, and ``stop`` (the daemon's SIGTERM) lets actions in flight finish and starts no new one.
    """

    on_plan: Callable[[HostPlan], None] | None = None
    on_result: Callable[[ActionResult], None] | None = None
    stop: threading.Event | None = None

    @property
    def stopped(self) -> bool:
        """Whether the caller asked to stop."""
        return self.stop is not None and self.stop.is_set()


DEFAULT_SETTINGS = ApplySettings()
NO_HOOKS = Hooks()


def apply_host_plan(
    hypervisor: Hypervisor,
    plan: HostPlan,
    settings: ApplySettings = DEFAULT_SETTINGS,
    hooks: Hooks = NO_HOOKS,
) -> list[ActionResult]:
    """Run ``plan`` phase by phase; stop after the first phase with a failure. Blocked plans do nothing.

    Within a phase, the actions (each on a different domain) run concurrently from a pool of
    ``workers`` threads: libvirt serialises per domain, not per host, and most of the time is
    QEMU starting, stopping or answering its monitor, or a round trip to a remote libvirtd.
    Phases never overlap, and each phase moves usage one way only (it frees or it takes), so
    running a phase's actions at once never passes a state worse than the phase's end: the
    shrink-before-grow guarantee holds as in a serial apply.
    ``hooks.stop`` (the daemon's SIGTERM) lets actions in flight finish and starts no new one.
    """
    results: list[ActionResult] = []
    if plan.blocked:
        return results
    lock = threading.Lock()

    def run(action: Action) -> ActionResult:
        started = time.monotonic()
        try:
            detail = _execute(hypervisor, action, settings.shutdown_timeout)
            result = ActionResult(action, True, detail, time.monotonic() - started)
        except HostError as err:
            result = ActionResult(action, False, str(err), time.monotonic() - started, err)
        with lock:
            results.append(result)
            if hooks.on_result is not None:
                hooks.on_result(result)
        return result

    for group in _phases(plan.actions):
        if hooks.stopped:
            break
        if len(group) > 1 and settings.workers > 1:
            with ThreadPoolExecutor(max_workers=min(settings.workers, len(group))) as pool:
                outcomes = list(pool.map(lambda action: None if hooks.stopped else run(action), group))
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


def _phases(actions: Sequence[Action]) -> list[list[Action]]:
    """Consecutive actions of the same phase and kind (the plan is already in apply order)."""
    groups: list[list[Action]] = []
    for action in actions:
        if groups and (groups[-1][0].phase, groups[-1][0].kind) == (action.phase, action.kind):
            groups[-1].append(action)
        else:
            groups.append([action])
    return groups


def _execute(hypervisor: Hypervisor, action: Action, shutdown_timeout: float) -> str:
    """Carry out one action; return a short description of what happened."""
    name = action.domain
    match action.kind:
        case ActionKind.DEFINE:
            assert action.xml is not None
            hypervisor.define(action.xml)
            if action.autostart:
                hypervisor.set_autostart(name, True)
            return "defined"
        case ActionKind.UPDATE:
            done = []
            if action.xml is not None:
                hypervisor.define(action.xml)
                done.append("redefined" + (" (takes effect at the next restart)" if action.restart else ""))
            if action.autostart is not None:
                hypervisor.set_autostart(name, action.autostart)
                done.append(f"autostart {'on' if action.autostart else 'off'}")
            return ", ".join(done)
        case ActionKind.BALLOON:
            assert action.config_memory is not None
            hypervisor.set_current_memory(name, action.config_memory, action.live_memory)
            return (
                "live and persistent target set"
                if action.live_memory is not None
                else "persistent target set"
            )
        case ActionKind.START:
            hypervisor.start(name)
            return "started"
        case ActionKind.STOP:
            return hypervisor.stop(name, shutdown_timeout).value
        case ActionKind.UNDEFINE:
            outcome = hypervisor.stop(name, shutdown_timeout) if action.stop_first else None
            hypervisor.undefine(name)
            if outcome is None or outcome is StopOutcome.ALREADY:
                return "undefined"
            return f"{outcome.value}, then undefined"
    raise AssertionError(f"unknown action {action.kind}")  # pragma: no cover - closed enum
