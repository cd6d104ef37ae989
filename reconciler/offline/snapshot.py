"""Host snapshots: the observed state of hosts as JSON, for plans without access to the hypervisors.

A snapshot holds, per host, what the policy measures (CPUs, memory, swap, KSM savings) and every
domain exactly as observed: its persistent XML, run state (with libvirt's lifecycle state, its
reason, the running instance's id and, when restart-marked, what it runs) and autostart flag,
plus the parsed model and ownership for people and other tools to read. Planning against a
snapshot uses the very same observation a live plan would, so the two plans are equal for the
same state.

It may also hold the host's environment for the pre-flight checks (networks, bridges, the files
that were asked about). A snapshot without one (taken before it was recorded) still loads: its
pre-flight checks then say that nothing of the environment was checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from reconciler.engine.actions import VolumeChange
from reconciler.engine.hypervisor import (
    DomainObservation,
    HostEnvironment,
    HostObservation,
    NetworkFact,
    PathFact,
    PoolObservation,
    StopOutcome,
    VolumeObservation,
)
from reconciler.errors import DomainXMLError, PermanentHostError, SnapshotError
from reconciler.libvirtxml.parse import parse_domain
from reconciler.spec.models import DomainSpec, Owner
from reconciler.spec.storage import FROM_DEFINITION

FORMAT_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True)


class SnapshotDomain(_Model):
    """One domain as observed."""

    name: str = Field(description="the domain's libvirt name")
    active: bool = Field(description="whether it was running (or paused, or shutting down)")
    autostart: bool = Field(description="whether it starts with the host")
    xml: str = Field(description="the persistent (inactive) domain XML, as libvirt returned it")
    state: str = Field(default="", description="libvirt's lifecycle state (running, shutoff ...); '' unknown")
    reason: str = Field(
        default="", description="why it is in that state (shut off: shutdown, destroyed, crashed ...)"
    )
    instance: int = Field(
        default=-1,
        description="the running instance's domain id (a start takes a new one, but ids repeat after a "
        "libvirtd restart or a host reboot); -1 when off",
    )
    running_definition: str | None = Field(
        default=None,
        description="for a running domain with a restart mark: the ownership key of the definition it "
        "was started from (its live XML), to tell a pending restart; null when not read",
    )
    managed: bool = Field(description="carries virt-reconcile's ownership metadata")
    owner: Owner | None = Field(
        default=None, description="that metadata: which manifest and revision; null when unmanaged"
    )
    spec: DomainSpec | None = Field(default=None, description="the modelled fields; null when unreadable")


class SnapshotNetwork(_Model):
    """One libvirt network of the host."""

    active: bool = Field(description="whether the network runs (a domain on it can start)")
    autostart: bool = Field(description="whether the network starts with the host")


class SnapshotPath(_Model):
    """One file a domain uses, as the host reported it (see ``PathFact``)."""

    exists: bool | None = Field(description="null: it could not be checked (note says why)")
    qemu_denied: str | None = Field(default=None, description="why the QEMU user could not read it")
    qemu_cannot_write: str | None = Field(default=None, description="why the QEMU user could not write it")
    note: str = Field(default="", description="why it was not checked, when exists is null")


class SnapshotEnvironment(_Model):
    """What the pre-flight checks look at: networks, bridges, files; null where not checked."""

    networks: dict[str, SnapshotNetwork] | None = Field(
        default=None, description="every libvirt network by name; null when not checked"
    )
    bridges: dict[str, str] | None = Field(
        default=None,
        description="interface name → libvirt's type (bridge, ethernet...); null when not checked",
    )
    paths: dict[str, SnapshotPath] = Field(
        default_factory=dict, description="the files domains use that were asked about, by path"
    )
    unchecked: list[str] = Field(default_factory=list, description="what could not be checked, and why")


class SnapshotVolume(_Model):
    """One volume of a storage pool (sizes in bytes)."""

    name: str = Field(description="the volume's name in its pool")
    path: str = Field(description="its path on the host")
    capacity: int = Field(description="bytes: the virtual size the guest sees")
    allocation: int = Field(description="bytes it takes in the pool")
    format: str = Field(default="", description="qcow2, raw ...; '' when libvirt did not say")
    backing: str = Field(default="", description="the backing file of an overlay; '' for none")


class SnapshotPool(_Model):
    """One storage pool of the host (sizes in bytes; 0 when it is not active)."""

    name: str = Field(description="the pool's libvirt name")
    type: str = Field(description="dir, logical ...")
    target: str = Field(description="the folder (dir) or /dev/VG (logical) its volumes live in")
    active: bool = Field(description="whether it runs")
    autostart: bool = Field(description="whether it starts with the host")
    capacity: int = Field(description="bytes")
    allocation: int = Field(description="bytes")
    available: int = Field(description="bytes")
    volumes: list[SnapshotVolume] = Field(default_factory=list, description="every volume of the pool")
    xml: str = Field(default="", description="the pool's persistent XML")


class SnapshotHost(_Model):
    """One host as observed."""

    uri: str = Field(description="the libvirt URI (or sandbox:PATH) the host was observed through")
    cpus: int = Field(description="logical CPUs of the host")
    memory: int = Field(description="bytes: the kernel's total")
    swap: int | None = Field(default=None, description="bytes; null where unknown (remote hosts)")
    ksm_saved: int = Field(default=0, description="bytes KSM was saving by merging pages; 0 without KSM")
    domains: list[SnapshotDomain] = Field(description="every domain defined on the host, managed or not")
    environment: SnapshotEnvironment | None = Field(
        default=None, description="for the pre-flight checks; null in snapshots taken before it was recorded"
    )
    pools: list[SnapshotPool] = Field(
        default_factory=list, description="every storage pool with its volumes; empty in older snapshots"
    )


class Snapshot(_Model):
    """Observed state of one or more hosts (``virt-reconcile snapshot``)."""

    format_version: int = Field(
        default=FORMAT_VERSION, description="the version of the snapshot format this file is written in"
    )
    taken_at: str = Field(description="when the hosts were observed (ISO 8601)")
    hosts: dict[str, SnapshotHost] = Field(description="each host's observed state, by the name of its Host")


def snapshot_host(
    uri: str, observed: HostObservation, environment: HostEnvironment | None = None
) -> SnapshotHost:
    """The snapshot of one observed host, with its environment when given."""
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
                state=domain.state,
                reason=domain.reason,
                instance=domain.instance,
                running_definition=domain.running_definition,
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
        environment=None if environment is None else snapshot_environment(environment),
        pools=[
            SnapshotPool(
                name=p.name,
                type=p.type,
                target=p.target,
                active=p.active,
                autostart=p.autostart,
                capacity=p.capacity,
                allocation=p.allocation,
                available=p.available,
                volumes=[SnapshotVolume(**vars(volume)) for volume in p.volumes],
                xml=p.xml,
            )
            for p in observed.pools
        ],
    )


def snapshot_environment(environment: HostEnvironment) -> SnapshotEnvironment:
    """The recorded form of a host's environment."""
    networks = environment.networks
    return SnapshotEnvironment(
        networks=None
        if networks is None
        else {name: SnapshotNetwork(active=n.active, autostart=n.autostart) for name, n in networks.items()},
        bridges=None if environment.bridges is None else dict(environment.bridges),
        paths={
            path: SnapshotPath(
                exists=f.exists, qemu_denied=f.qemu_denied, qemu_cannot_write=f.qemu_cannot_write, note=f.note
            )
            for path, f in environment.paths.items()
        },
        unchecked=list(environment.unchecked),
    )


def recorded_environment(host: SnapshotHost, paths: Collection[str]) -> HostEnvironment:
    """The environment a snapshot recorded, for ``paths``; what it did not record is unchecked."""
    recorded = host.environment
    if recorded is None:
        return HostEnvironment(
            paths=dict.fromkeys(
                paths, PathFact(None, note="not checked: the snapshot records no environment")
            ),
            unchecked=("networks, bridges and files: not checked: the snapshot records no environment",),
        )
    missing = PathFact(None, note="not checked: not recorded in the snapshot")
    facts = {
        path: PathFact(f.exists, f.qemu_denied, f.qemu_cannot_write, f.note)
        if (f := recorded.paths.get(path))
        else missing
        for path in paths
    }
    networks = recorded.networks
    return HostEnvironment(
        networks=None
        if networks is None
        else {name: NetworkFact(n.active, n.autostart) for name, n in networks.items()},
        bridges=recorded.bridges,
        paths=facts,
        unchecked=tuple(recorded.unchecked),
    )


def observation(host: SnapshotHost) -> HostObservation:
    """The HostObservation a snapshot recorded, as the planner consumes it."""
    return HostObservation(
        cpus=host.cpus,
        memory=host.memory,
        swap=host.swap,
        ksm_saved=host.ksm_saved,
        domains=tuple(
            DomainObservation(
                d.name, d.xml, d.active, d.autostart, d.state, d.reason, d.instance, d.running_definition
            )
            for d in host.domains
        ),
        pools=tuple(
            PoolObservation(
                p.name,
                p.type,
                p.target,
                p.active,
                p.autostart,
                p.capacity,
                p.allocation,
                p.available,
                tuple(VolumeObservation(**v.model_dump()) for v in p.volumes),
                p.xml,
            )
            for p in host.pools
        ),
    )


def fingerprint(observed: HostObservation) -> str:
    """A digest of everything a plan was made from: any change to a domain or its state moves it,
    a restart too (a new instance id, or for a restart-marked domain a new running definition)."""
    digest = hashlib.sha256()
    for domain in sorted(observed.domains, key=lambda d: d.name):
        record: list[object] = [domain.name, domain.active, domain.autostart, domain.xml]
        if domain.active and domain.instance >= 0:
            record.append(domain.instance)
        if domain.running_definition is not None:
            record.append(domain.running_definition)
        digest.update(json.dumps(record).encode() + b"\n")
    digest.update(json.dumps([observed.cpus, observed.memory, observed.swap]).encode())
    for pool in sorted(observed.pools, key=lambda p: p.name):  # what pools are and promise, not their fill
        volumes = sorted((v.name, v.capacity) for v in pool.volumes)
        record = [pool.name, pool.type, pool.target, pool.active, pool.autostart, pool.capacity, volumes]
        digest.update(json.dumps(record).encode() + b"\n")
    return digest.hexdigest()


def load_snapshots(path: Path) -> dict[str, SnapshotHost]:
    """Hosts from a snapshot file, or from every ``*.json`` file of a folder (later files win)."""
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise SnapshotError(f"{path}: no snapshot files (*.json)")
    hosts: dict[str, SnapshotHost] = {}
    for file in files:
        try:
            # a recorded spec is read from libvirt's definition: its volumes carry no size
            hosts.update(Snapshot.model_validate_json(file.read_bytes(), context=FROM_DEFINITION).hosts)
        except (OSError, ValueError) as err:
            raise SnapshotError(f"{file}: not a virt-reconcile snapshot: {err}") from err
    return hosts


class SnapshotHypervisor:
    """A Hypervisor that only observes, from a snapshot: plans offline, refuses to change anything."""

    def __init__(self, name: str, host: SnapshotHost) -> None:
        self.name = name
        self._host = host
        self._observed = observation(host)

    def exclusive(self, wait: bool = True) -> contextlib.AbstractContextManager[object]:
        """Nothing to lock: a snapshot never changes."""
        return contextlib.nullcontext()

    def observe(self) -> HostObservation:
        """The recorded observation."""
        return self._observed

    def environment(
        self, paths: Collection[str], *, secrets: Collection[str] = (), folders: Collection[str] = ()
    ) -> HostEnvironment:
        """The recorded environment; files the snapshot was not asked about are unchecked (password
        files and pool folders are never recorded: unchecked too)."""
        return recorded_environment(self._host, paths)

    def _refuse(self, *_args: Any) -> Any:
        raise PermanentHostError(self.name, "a snapshot is read-only: apply needs the host itself")

    def define(self, xml: str) -> None:
        """Refused."""
        self._refuse(xml)

    def undefine(self, name: str, *, keep_nvram: bool = False) -> None:
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

    def set_owner(self, name: str, owner: Owner) -> None:
        """Refused."""
        self._refuse(name, owner)

    def ensure_pool(self, name: str, xml: str | None, autostart: bool | None) -> str:
        """Refused."""
        return self._refuse(name, xml, autostart)  # type: ignore[no-any-return]

    def create_volume(self, volume: VolumeChange) -> str:
        """Refused."""
        return self._refuse(volume)  # type: ignore[no-any-return]

    def resize_volume(self, domain: str, volume: VolumeChange) -> str:
        """Refused."""
        return self._refuse(domain, volume)  # type: ignore[no-any-return]

    def delete_volume(self, volume: VolumeChange) -> str:
        """Refused."""
        return self._refuse(volume)  # type: ignore[no-any-return]

    def upload_volume(self, volume: VolumeChange, image: bytes) -> str:
        """Refused."""
        return self._refuse(volume)  # type: ignore[no-any-return]

    def record_seed(self, name: str, digest: str) -> None:
        """Refused."""
        self._refuse(name, digest)
