"""Host snapshots: the observed state of hosts as JSON, for plans without access to the hypervisors.

A snapshot holds, per host, what the policy measures (CPUs, memory, swap, KSM savings) and every
domain exactly as observed: its persistent XML, run state and autostart flag, plus the parsed model
and ownership for people and other tools to read. Planning against a snapshot uses the very same
observation a live plan would, so the two plans are equal for the same state.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from reconciler.engine.hypervisor import DomainObservation, HostObservation, StopOutcome
from reconciler.errors import DomainXMLError, PermanentHostError, ReconcilerError
from reconciler.libvirtxml.parse import parse_domain
from reconciler.spec.models import DomainSpec, Owner

FORMAT_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True)


class SnapshotDomain(_Model):
    """One domain as observed."""

    name: str
    active: bool
    autostart: bool
    xml: str = Field(description="the persistent (inactive) domain XML, as libvirt returned it")
    managed: bool = Field(description="carries virt-reconcile's ownership metadata")
    owner: Owner | None = None
    spec: DomainSpec | None = Field(default=None, description="the modelled fields; null when unreadable")


class SnapshotHost(_Model):
    """One host as observed."""

    uri: str
    cpus: int
    memory: int = Field(description="bytes: the kernel's total")
    swap: int | None = Field(default=None, description="bytes; null where unknown (remote hosts)")
    ksm_saved: int = 0
    domains: list[SnapshotDomain]


class Snapshot(_Model):
    """Observed state of one or more hosts (``virt-reconcile snapshot``)."""

    format_version: int = FORMAT_VERSION
    taken_at: str
    hosts: dict[str, SnapshotHost]


def snapshot_host(uri: str, observed: HostObservation) -> SnapshotHost:
    """The snapshot of one observed host."""
    domains = []
    for domain in observed.domains:
        try:
            parsed = parse_domain(
                domain.xml, state="running" if domain.active else "stopped", autostart=domain.autostart
            )
            spec, owner = parsed.spec, parsed.owner
        except DomainXMLError:
            spec, owner = None, None
        domains.append(
            SnapshotDomain(
                name=domain.name,
                active=domain.active,
                autostart=domain.autostart,
                xml=domain.xml,
                managed=owner is not None,
                owner=owner,
                spec=spec,
            )
        )
    return SnapshotHost(
        uri=uri,
        cpus=observed.cpus,
        memory=observed.memory,
        swap=observed.swap,
        ksm_saved=observed.ksm_saved,
        domains=domains,
    )


def observation(host: SnapshotHost) -> HostObservation:
    """The HostObservation a snapshot recorded, as the planner consumes it."""
    return HostObservation(
        cpus=host.cpus,
        memory=host.memory,
        swap=host.swap,
        ksm_saved=host.ksm_saved,
        domains=tuple(DomainObservation(d.name, d.xml, d.active, d.autostart) for d in host.domains),
    )


def fingerprint(observed: HostObservation) -> str:
    """A digest of everything a plan was made from: any change to a domain or its state moves it."""
    digest = hashlib.sha256()
    for domain in sorted(observed.domains, key=lambda d: d.name):
        record = [domain.name, domain.active, domain.autostart, domain.xml]
        digest.update(json.dumps(record).encode() + b"\n")
    digest.update(json.dumps([observed.cpus, observed.memory, observed.swap]).encode())
    return digest.hexdigest()


def load_snapshots(path: Path) -> dict[str, SnapshotHost]:
    """Hosts from a snapshot file, or from every ``*.json`` file of a folder (later files win)."""
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise ReconcilerError(f"{path}: no snapshot files (*.json)")
    hosts: dict[str, SnapshotHost] = {}
    for file in files:
        try:
            hosts.update(Snapshot.model_validate_json(file.read_bytes()).hosts)
        except (OSError, ValueError) as err:
            raise ReconcilerError(f"{file}: not a virt-reconcile snapshot: {err}") from err
    return hosts


class SnapshotHypervisor:
    """A Hypervisor that only observes, from a snapshot: plans offline, refuses to change anything."""

    def __init__(self, name: str, host: SnapshotHost) -> None:
        self.name = name
        self._observed = observation(host)

    def observe(self) -> HostObservation:
        """The recorded observation."""
        return self._observed

    def _refuse(self, *_args: Any) -> Any:
        raise PermanentHostError(self.name, "a snapshot is read-only: apply needs the host itself")

    def define(self, xml: str) -> None:
        """Refused."""
        self._refuse(xml)

    def undefine(self, name: str) -> None:
        """Refused."""
        self._refuse(name)

    def start(self, name: str) -> None:
        """Refused."""
        self._refuse(name)

    def stop(self, name: str, timeout: float) -> StopOutcome:
        """Refused."""
        return self._refuse(name, timeout)  # type: ignore[no-any-return]

    def set_current_memory(self, name: str, config: int, live: int | None) -> None:
        """Refused."""
        self._refuse(name, config, live)

    def set_autostart(self, name: str, autostart: bool) -> None:
        """Refused."""
        self._refuse(name, autostart)
