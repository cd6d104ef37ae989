"""The Hypervisor protocol: the only way the core observes a host or changes it.

The core (plan, apply) talks to this protocol; ``libvirt_host`` implements it on libvirt. Tests can
wrap a real implementation (for example to stop after N actions) without patching anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


@dataclass(frozen=True)
class DomainObservation:
    """One domain as libvirt reports it: its persistent XML and its run state."""

    name: str
    xml: str
    active: bool
    autostart: bool


@dataclass(frozen=True)
class HostObservation:
    """A host's capacity (as libvirt reports it) and every domain on it, managed or not."""

    cpus: int
    memory: int  # bytes: the kernel's total (node memory stats), not the NUMA cell sum
    domains: tuple[DomainObservation, ...]
    swap: int | None = None  # bytes; None where it cannot be known (a remote host)
    ksm_saved: int = 0  # bytes KSM saves right now (pages_sharing x page size); 0 without KSM


class StopOutcome(StrEnum):
    """How a domain ended up shut off."""

    SHUTDOWN = "shut down gracefully"
    DESTROYED = "forced off after the shutdown timeout"
    ALREADY = "already shut off"


class Hypervisor(Protocol):
    """One connected host. Every method either succeeds or raises ``HostError``."""

    name: str

    def observe(self) -> HostObservation:
        """Capacity plus every domain with its persistent XML, in O(1) calls + one XML read per domain."""
        ...

    def define(self, xml: str) -> None:
        """Define (or redefine) a persistent domain from XML."""
        ...

    def undefine(self, name: str) -> None:
        """Remove a shut-off domain's definition, with its managed save, snapshots and NVRAM."""
        ...

    def start(self, name: str) -> None:
        """Start a defined domain."""
        ...

    def stop(self, name: str, timeout: float) -> StopOutcome:
        """Shut a domain down gracefully; force it off if it is still running after ``timeout`` s."""
        ...

    def set_current_memory(self, name: str, config: int, live: int | None) -> None:
        """Set the balloon target (bytes) in the persistent config, and live when ``live`` is given."""
        ...

    def set_autostart(self, name: str, autostart: bool) -> None:
        """Start the domain with the host, or not."""
        ...
