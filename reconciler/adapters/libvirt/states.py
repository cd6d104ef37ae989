"""libvirt's lifecycle states and reasons by name, as observations carry them (drift correction
tells a guest that shut itself down from a crash or a destroy by hand), and which definition a
running domain was started from (pending restarts)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import libvirt

from reconciler.errors import DomainXMLError
from reconciler.libvirtxml.ownership import RESTART_MARK_ATTRIBUTE, running_definition

#: libvirt's lifecycle states by name.
_STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}
#: Why a domain is off (the reasons drift correction tells apart), by name.
_SHUTOFF_REASONS = {
    libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN: "unknown",
    libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: "destroyed",
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED: "migrated",
    libvirt.VIR_DOMAIN_SHUTOFF_SAVED: "saved",
    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: "failed",
    libvirt.VIR_DOMAIN_SHUTOFF_FROM_SNAPSHOT: "from_snapshot",
    libvirt.VIR_DOMAIN_SHUTOFF_DAEMON: "daemon",
}
_ACTIVE_STATES = {
    libvirt.VIR_DOMAIN_RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED,
    libvirt.VIR_DOMAIN_PAUSED,
    libvirt.VIR_DOMAIN_PMSUSPENDED,
    libvirt.VIR_DOMAIN_SHUTDOWN,
}


def lifecycle(stats: Mapping[str, Any]) -> tuple[bool, str, str]:
    """Whether a domain is active, its state and why it is in it, from getAllDomainStats' state group."""
    state, reason = stats.get("state.state", -1), stats.get("state.reason", -1)
    return state in _ACTIVE_STATES, _STATE_NAMES.get(state, ""), _reason_name(state, reason)


def _reason_name(state: int, reason: int) -> str:
    """Why a domain is in ``state``, by name: the shut-off and crashed reasons; "" for others."""
    if state == libvirt.VIR_DOMAIN_SHUTOFF:
        return _SHUTOFF_REASONS.get(reason, "unknown")
    if state == libvirt.VIR_DOMAIN_CRASHED:
        return "panicked" if reason == libvirt.VIR_DOMAIN_CRASHED_PANICKED else "unknown"
    return ""


def running_definition_of(
    persistent_xml: str, read_live: Callable[[], str | None], kept: str | None = None
) -> str | None:
    """The ownership key of the definition a running domain was started from, read from its live
    XML (``read_live``: one more call; ``kept`` instead when the caller kept it) only when its
    persistent XML carries a restart mark, which is rare; None otherwise, or when the domain went
    away meanwhile. Domain ids cannot tell it: they repeat after a libvirtd restart or a reboot."""
    if RESTART_MARK_ATTRIBUTE not in persistent_xml:
        return None
    if kept is not None:
        return kept
    live = read_live()
    with contextlib.suppress(DomainXMLError):
        return running_definition(live) if live is not None else None
    return None
