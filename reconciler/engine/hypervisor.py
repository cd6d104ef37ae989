"""The Hypervisor protocol: the only way the core observes a host or changes it.

The core (plan, apply) talks to this protocol; ``adapters.libvirt.host`` implements it on libvirt. Tests can
wrap a real implementation (for example to stop after N actions) without patching anything.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from reconciler.spec.models import Owner

if TYPE_CHECKING:
    from reconciler.engine.actions import VolumeChange


@dataclass(frozen=True)
class DomainObservation:
    """One domain as libvirt reports it: its persistent XML and its run state.

    ``state`` and ``reason`` are libvirt's lifecycle state and why it is in it, by name ("shutoff"
    because of "shutdown", "destroyed", "crashed" ...; "" when not known), so drift correction can
    tell a guest that shut itself down from a crash or a destroy by hand. ``instance`` is the
    running instance's domain id (-1 when it is off). A start takes a new id, but ids are not
    unique over time: QEMU's next id restarts from the highest running one when libvirtd restarts,
    and from 1 after a host reboot. So ``running_definition`` tells what runs: for a running domain
    whose persistent XML carries a restart mark, the ``definition_key`` of its live XML (the
    definition it was started from); None when not read (no mark, not running, an older snapshot).
    """

    name: str
    xml: str
    active: bool
    autostart: bool
    state: str = ""
    reason: str = ""
    instance: int = -1
    running_definition: str | None = None


@dataclass(frozen=True)
class VolumeObservation:
    """One volume of a storage pool as libvirt reports it (sizes in bytes)."""

    name: str
    path: str
    capacity: int  # the virtual size the guest sees
    allocation: int  # what it takes in the pool now
    format: str = ""  # qcow2, raw ... ("" when libvirt does not say)
    backing: str = ""  # the backing file of an overlay, "" for none


@dataclass(frozen=True)
class PoolObservation:
    """One storage pool of a host: its definition's essentials, its figures and its volumes."""

    name: str
    type: str  # dir, logical, ...
    target: str  # the folder (dir) or /dev/VG (logical) volumes live in
    active: bool
    autostart: bool
    capacity: int  # bytes; 0 when the pool is not active
    allocation: int
    available: int
    volumes: tuple[VolumeObservation, ...] = ()
    xml: str = ""  # the pool's persistent XML, to compare with what the manifest wants
    #: The filesystem holding a dir pool's folder, when known (this machine: its device number):
    #: pools with the same one share its space. "" when not known (a remote host, a sandbox).
    filesystem: str = ""


@dataclass(frozen=True)
class HostObservation:
    """A host's capacity (as libvirt reports it) and every domain on it, managed or not."""

    cpus: int
    memory: int  # bytes: the kernel's total (node memory stats), not the NUMA cell sum
    domains: tuple[DomainObservation, ...]
    swap: int | None = None  # bytes; None where it cannot be known (a remote host)
    ksm_saved: int = 0  # bytes KSM saves right now (pages_sharing x page size); 0 without KSM
    pools: tuple[PoolObservation, ...] = ()  # every storage pool, managed or not


@dataclass(frozen=True)
class NetworkFact:
    """One libvirt network of a host: whether it runs now, and whether it starts with the host."""

    active: bool
    autostart: bool


@dataclass(frozen=True)
class PathFact:
    """What a host says about one file a domain would use (a disk image, a kernel, an initrd).

    ``exists`` is None when the file could not be looked at (``note`` says why: a remote path in
    no storage pool, a simulated host...). ``qemu_denied`` is set when the file exists but the
    QEMU user could not read it, with the reason (a folder on the way it may not enter);
    ``qemu_cannot_write`` likewise for writing, which a disk needs. Both are None when QEMU can,
    or when it was not checked (a host that is not this machine).
    """

    exists: bool | None
    qemu_denied: str | None = None
    qemu_cannot_write: str | None = None
    note: str = ""


@dataclass(frozen=True)
class SecretFact:
    """A graphics ``passwordFile`` as the definition will read it, on the machine virt-reconcile
    runs on: the password's length, or why the file cannot be used ("" when it can)."""

    length: int = 0
    problem: str = ""


@dataclass(frozen=True)
class SpaceFact:
    """The filesystem that holds (or will hold) a folder, as libvirt counts a dir pool on it
    (statvfs of the nearest folder that exists): bytes in all, and free. ``filesystem`` as
    :attr:`PoolObservation.filesystem`."""

    capacity: int
    available: int
    filesystem: str = ""


@dataclass(frozen=True)
class HostEnvironment:
    """What domains need from their host besides CPUs and memory, for the pre-flight checks.

    ``networks`` maps every libvirt network to its state and ``bridges`` every host interface
    libvirt knows to its type (``bridge``, ``ethernet``...); either is None when it could not be
    checked, and ``unchecked`` says why. ``paths`` holds a fact for each path that was asked for,
    ``secrets`` for each graphics password file, and ``space`` for each pool folder on a host
    that is this machine (elsewhere it is not known: absent).
    """

    networks: Mapping[str, NetworkFact] | None = None
    bridges: Mapping[str, str] | None = None
    paths: Mapping[str, PathFact] = field(default_factory=dict)
    unchecked: tuple[str, ...] = ()
    secrets: Mapping[str, SecretFact] = field(default_factory=dict)
    space: Mapping[str, SpaceFact] = field(default_factory=dict)


class StopOutcome(StrEnum):
    """How a domain ended up shut off."""

    SHUTDOWN = "shut down gracefully"
    DESTROYED = "forced off after the shutdown timeout"
    ALREADY = "already shut off"


class Hypervisor(Protocol):
    """One connected host. Every method either succeeds or raises ``HostError``."""

    name: str

    def exclusive(self, wait: bool = True) -> AbstractContextManager[object]:
        """Hold the host's apply lock for the block: no other run observes, checks and applies it
        meanwhile. Taken before observing (see ``engine.sessions``). While another run holds it,
        wait for it (up to the wait limit), or with ``wait=False`` raise ``LockBusyError`` at once."""
        ...

    def observe(self) -> HostObservation:
        """Capacity plus every domain with its persistent XML, in O(1) calls + one XML read per domain
        (and a live XML read per running domain with a restart mark: ``running_definition``)."""
        ...

    def environment(
        self, paths: Collection[str], *, secrets: Collection[str] = (), folders: Collection[str] = ()
    ) -> HostEnvironment:
        """The host's networks and bridges, a fact for each of ``paths`` (files domains use), for
        each of ``secrets`` (graphics password files, read where a definition is sent from) and,
        where it can be known, for the filesystem of each of ``folders`` (pools' folders)."""
        ...

    def define(self, xml: str) -> None:
        """Define (or redefine) a persistent domain from XML."""
        ...

    def undefine(self, name: str, *, keep_nvram: bool = False) -> None:
        """Remove a shut-off domain's definition with its managed save and snapshot metadata, and
        its NVRAM unless ``keep_nvram`` (a moved guest's firmware variables stay for the operator)."""
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

    def create_volume(self, volume: VolumeChange) -> str:
        """Make a volume in its pool: empty, a qcow2 overlay on ``volume.source`` (``backing``) or a
        copy of it (``clone``); one already there as asked is left alone. Return what was done."""
        ...

    def resize_volume(self, domain: str, volume: VolumeChange) -> str:
        """Grow a volume to ``volume.capacity``: through the running ``domain`` (the guest sees the
        new size at once) when it runs on it, else in its pool. Return what was done."""
        ...

    def delete_volume(self, volume: VolumeChange) -> str:
        """Delete a volume from its pool (one already gone is no error). Return what was done."""
        ...

    def upload_volume(self, volume: VolumeChange, image: bytes) -> str:
        """Write ``image`` as the whole content of a volume of ``volume.capacity`` bytes (made, or
        made again at that size, first) through libvirt's upload stream. Return what was done."""
        ...

    def record_seed(self, name: str, digest: str) -> None:
        """Record in a domain's ownership metadata the digest of the seed just uploaded for it: a
        metadata write of the persistent definition, nothing redefined."""
        ...

    def ensure_pool(self, name: str, xml: str | None, autostart: bool | None) -> str:
        """Make storage pool ``name`` run as a ``pool`` action says: define it from ``xml`` when given,
        start it when inactive (building it first only when it cannot start as it is, and never over
        a device holding data), set its autostart (None: keep); return what was done."""
        ...

    def set_owner(self, name: str, owner: Owner) -> None:
        """Rewrite a domain's ownership element in its persistent definition only: a metadata write,
        no redefine (the off-on-purpose mark of ``HostPlan.metadata_writes``)."""
        ...
