"""One action of a plan carried out through a Hypervisor, and what it did in a few words.

Split from :mod:`reconciler.engine.apply`, which decides the order and the concurrency.
"""

from __future__ import annotations

from reconciler.engine.actions import Action, ActionKind, Phase
from reconciler.engine.hypervisor import Hypervisor, StopOutcome


def execute_action(hypervisor: Hypervisor, action: Action, shutdown_timeout: float) -> str:
    """Carry out one action; return a short description of what happened."""
    name = action.domain
    match action.kind:
        case ActionKind.DEFINE:
            return _define(hypervisor, action)
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
        case ActionKind.RESTART:
            outcome = hypervisor.stop(name, shutdown_timeout)
            hypervisor.start(name)  # returns once it runs again: the next restart may begin
            return "started again" if outcome is StopOutcome.ALREADY else f"{outcome.value}, started again"
        case (
            ActionKind.POOL
            | ActionKind.CREATE_VOLUME
            | ActionKind.RESIZE_VOLUME
            | ActionKind.DELETE_VOLUME
            | ActionKind.RESEED
        ):
            return _storage(hypervisor, action)
        case ActionKind.MOVE if action.xml is not None:
            return _define(hypervisor, action)
        case ActionKind.UNDEFINE | ActionKind.MOVE:
            # Stopped whatever the plan saw: it may have been started since (an undefine would then
            # leave it running as a transient domain, and a move would run it twice).
            outcome = hypervisor.stop(name, shutdown_timeout)
            hypervisor.undefine(name, keep_nvram=action.kind is ActionKind.MOVE)
            if outcome is None or outcome is StopOutcome.ALREADY:
                return "undefined"
            return f"{outcome.value}, then undefined"
    raise AssertionError(f"unknown action {action.kind}")  # pragma: no cover - closed enum


def _reseed(hypervisor: Hypervisor, action: Action) -> str:
    """Upload a cloud-init seed; for a domain already defined, record its digest (a new domain's
    definition, sent next, records it itself)."""
    assert action.volume is not None and action.seed is not None
    done = hypervisor.upload_volume(action.volume, action.seed.image)
    if action.phase is not Phase.CREATE_VOLUME:
        hypervisor.record_seed(action.domain, action.seed.digest)
        done += "; read after a restart from the host" if action.restart else "; read at the next boot"
    return done


def _storage(hypervisor: Hypervisor, action: Action) -> str:
    """A pool made to run; a disk's volume created, grown (live when the domain runs) or deleted;
    a cloud-init seed written."""
    if action.kind is ActionKind.POOL:
        return hypervisor.ensure_pool(action.domain, action.xml, action.autostart)
    if action.kind is ActionKind.RESEED:
        return _reseed(hypervisor, action)
    assert action.volume is not None
    if action.kind is ActionKind.CREATE_VOLUME:
        return hypervisor.create_volume(action.volume)
    if action.kind is ActionKind.RESIZE_VOLUME:
        return hypervisor.resize_volume(action.domain, action.volume)
    return hypervisor.delete_volume(action.volume)


def _define(hypervisor: Hypervisor, action: Action) -> str:
    """Define a new domain (or the target half of a move), with autostart when it wants it."""
    assert action.xml is not None
    hypervisor.define(action.xml)
    if action.autostart:
        hypervisor.set_autostart(action.domain, True)
    return f"defined (moved from {action.peer})" if action.kind is ActionKind.MOVE else "defined"
