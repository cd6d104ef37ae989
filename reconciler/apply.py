"""Execute a host's plan through a Hypervisor, in the plan's shrink-before-grow order.

The first failing action stops the host's apply: later actions may depend on it (a start after
a define). Everything done so far stays done, as on a real host; the next run re-plans from the
state it finds, which is how a crash mid-apply is recovered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from reconciler.errors import HostError
from reconciler.hypervisor import Hypervisor, StopOutcome
from reconciler.plan import Action, ActionKind, HostPlan


@dataclass(frozen=True)
class ActionResult:
    """How one action went: ``detail`` says what happened (e.g. shut down or forced off)."""

    action: Action
    ok: bool
    detail: str
    seconds: float


def apply_host_plan(
    hypervisor: Hypervisor,
    plan: HostPlan,
    *,
    shutdown_timeout: float,
    on_result: Callable[[ActionResult], None] | None = None,
    stop: threading.Event | None = None,
) -> list[ActionResult]:
    """Run every action of ``plan`` in order; stop at the first failure. Blocked plans do nothing.

    ``stop`` (the daemon's SIGTERM) ends the apply between two actions: the one in flight finishes.
    """
    results: list[ActionResult] = []
    if plan.blocked:
        return results
    for action in plan.actions:
        if stop is not None and stop.is_set():
            break
        started = time.monotonic()
        try:
            detail = _execute(hypervisor, action, shutdown_timeout)
            result = ActionResult(action, True, detail, time.monotonic() - started)
        except HostError as err:
            result = ActionResult(action, False, str(err), time.monotonic() - started)
        results.append(result)
        if on_result is not None:
            on_result(result)
        if not result.ok:
            break
    return results


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
