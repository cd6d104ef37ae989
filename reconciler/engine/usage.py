"""What a domain claims from its host, the unit of the overcommit arithmetic (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.spec.models import DomainSpec


@dataclass(frozen=True)
class Usage:
    """One domain's claim on its host: vCPUs, maximum and current memory (bytes), and run state."""

    vcpus: int
    memory: int
    current_memory: int
    active: bool

    @classmethod
    def of(cls, spec: DomainSpec, *, active: bool) -> Usage:
        """The claim of a domain with this spec."""
        return cls(spec.vcpus, spec.memory, spec.current_memory, active)


#: Every domain on a host by name.
HostState = Mapping[str, Usage]
