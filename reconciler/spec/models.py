"""Manifest models: Host and Domain documents exactly as docs/design.md §2 describes them.

Frozen pydantic models with camelCase field names and ``extra="forbid"``, so an unknown or misspelt
field is an error rather than a silently ignored setting. Sizes are bytes (whole KiB) in Python and
unit strings such as ``4GiB`` in YAML and JSON.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from reconciler.spec.annotations import Annotations, suspended
from reconciler.spec.cloudinit import CloudInit
from reconciler.spec.consoles import Graphics
from reconciler.spec.disks import Disk
from reconciler.spec.fieldtypes import Count, Duration, Flag, Model, Name, Size, duration_between
from reconciler.spec.hostpolicy import Capacity, Overcommit
from reconciler.spec.hosturi import HostURI
from reconciler.spec.labels import label_key_problem, label_value_problem
from reconciler.spec.sizes import format_size, parse_size
from reconciler.spec.syncwindows import SyncWindow

API_VERSION = "virt-reconcile/v1"
MAC_PATTERN = r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$"

#: How drift in a domain's run state is corrected (see DomainSpec.run_strategy).
RunStrategy = Literal["always", "rerunOnFailure", "manual", "halted"]

#: Disk name prefix libvirt uses for each bus, for targets the manifest leaves out.
BUS_TARGET_PREFIX: dict[str, str] = {"virtio": "vd", "sata": "sd", "scsi": "sd", "usb": "sd", "ide": "hd"}


# --------------------------------------------------------------------------------------- Host


#: The longest timeout a Host may set: past it a hung host is as good as never noticed.
MAX_TIMEOUT = 3600.0


class Timeouts(Model):
    """How long to wait for a host before its pass fails for that host alone (the others go on)."""

    connect: Annotated[Duration, duration_between(0.1, MAX_TIMEOUT)] = Field(  # type: ignore[assignment]
        default="10s",
        description="Longest wait for a connection (and libvirt's handshake) to the host; default 10s.",
    )
    call: Annotated[Duration, duration_between(1, MAX_TIMEOUT)] = Field(  # type: ignore[assignment]
        default="60s",
        description="Longest silence from a connected host (libvirt keepalive) before every call in "
        "flight fails and the host's pass ends with a temporary error; default 60s.",
    )


class HostSpec(Model):
    """How to reach a host and what may be done to it."""

    uri: Annotated[str, Field(min_length=1)] = Field(
        description="libvirt URI such as qemu:///system or qemu+ssh://root@hv1/system, or "
        "sandbox:PATH for the embedded test-driver host (PATH relative to this file).",
    )
    capacity: Capacity = Field(
        default_factory=Capacity,
        description="CPUs, memory and swap to count instead of what libvirt reports.",
    )
    prune: Flag = Field(
        default=False,
        description="Whether apply may undefine managed domains gone from the manifests without "
        "--allow-delete; default false.",
    )
    max_deletions: Annotated[Count, Field(ge=0, le=1_000_000)] = Field(
        default=5,
        description="An apply that would undefine more domains than this on the host (or more than "
        "half of its managed domains) is refused unless --allow-mass-delete; default 5.",
    )
    overcommit: Overcommit = Field(
        default_factory=Overcommit,
        description="How far domains may overcommit this host; checked on every plan before applying.",
    )
    timeouts: Timeouts = Field(
        default_factory=Timeouts,
        description="Connect and call timeouts: a host that does not answer fails alone, in time.",
    )
    sync_windows: tuple[SyncWindow, ...] = Field(
        default=(),
        description="When changes may be applied (cron schedule + duration, allow or deny); outside "
        "them the plan is shown and its changes wait for the next pass inside one. None: any time.",
    )

    @field_validator("uri")
    @classmethod
    def _uri_has_scheme(cls, uri: str) -> str:
        return HostURI.parse(uri).text

    @property
    def address(self) -> HostURI:
        """The URI as a value object that knows sandbox from libvirt, local from remote."""
        return HostURI(self.uri)


class HostMetadata(Model):
    """Identity of a Host document."""

    name: Name = Field(
        description="The host's name, which domains give as metadata.host and --host selects.",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="String labels (Kubernetes syntax: [prefix/]name, values up to 63 characters) that "
        "--selector picks hosts by, e.g. role: web.",
    )
    annotations: Annotations = Field(
        default_factory=dict,
        description='Free-form notes; virt-reconcile.dev/suspend: "true" leaves every domain of the '
        "host alone (nothing defined, changed, started, stopped or undefined there).",
    )

    @field_validator("labels")
    @classmethod
    def _label_syntax(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            problem = label_key_problem(key) or label_value_problem(value)
            if problem is not None:
                raise ValueError(problem)
        return labels


class Host(Model):
    """A hypervisor the reconciler manages."""

    api_version: Literal["virt-reconcile/v1"] = Field(
        description="Manifest format version; must be virt-reconcile/v1."
    )
    kind: Literal["Host"] = Field(description="Document type: Host describes a hypervisor.")
    metadata: HostMetadata = Field(description="The host's name and labels.")
    spec: HostSpec = Field(description="How to reach the host and what may be done to it.")

    @property
    def name(self) -> str:
        """The host's name as domains refer to it."""
        return self.metadata.name

    @property
    def suspended(self) -> bool:
        """Whether a suspend annotation leaves every domain of this host alone."""
        return suspended(self.metadata.annotations)


# ------------------------------------------------------------------------------------- Domain


class Interface(Model):
    """A NIC on a libvirt network or a host bridge."""

    network: Annotated[str, Field(min_length=1)] | None = Field(
        default=None, description="libvirt network to join (e.g. default); exactly one of network, bridge."
    )
    bridge: Annotated[str, Field(min_length=1)] | None = Field(
        default=None, description="Host bridge to join (e.g. br0); exactly one of network, bridge."
    )
    model: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")] | None = Field(
        default="virtio", description="NIC model the guest sees (virtio, e1000, ...); default virtio."
    )
    mac: Annotated[str, Field(pattern=MAC_PATTERN)] | None = Field(
        default=None,
        description='MAC address, quoted in YAML ("52:54:00:12:34:56"); null lets libvirt pick one.',
    )

    @model_validator(mode="after")
    def _one_source(self) -> Interface:
        if (self.network is None) == (self.bridge is None):
            raise ValueError("an interface needs exactly one of 'network' or 'bridge'")
        return self

    @field_validator("mac")
    @classmethod
    def _lower_mac(cls, mac: str | None) -> str | None:
        return mac.lower() if mac else mac


class Boot(Model):
    """Direct kernel boot; all null boots from the disks."""

    kernel: str | None = Field(
        default=None, description="Path of the kernel on the host to boot directly; null boots the disks."
    )
    initrd: str | None = Field(default=None, description="Path of the initrd on the host, with kernel.")
    cmdline: str | None = Field(default=None, description="Kernel command line, with kernel.")


class DomainSpec(Model):
    """Everything the reconciler models about a domain; every other XML element is left alone."""

    vcpus: Annotated[Count, Field(ge=1, le=4096)] = Field(
        default=1, description="Virtual CPUs; counted by the host's cpu overcommit limits; default 1."
    )
    memory: Annotated[Size, Field(gt=0)] = Field(
        description="Maximum memory with a unit, e.g. 4GiB; counted by the host's memory.commit limit.",
    )
    current_memory: Size = Field(
        description="Balloon target, at most memory; changed live without a redefine; default memory.",
    )
    state: Literal["running", "stopped"] = Field(
        default="running",
        description="Whether the domain should be running or shut off; default running (stopped "
        "with runStrategy halted).",
    )
    run_strategy: RunStrategy | None = Field(
        default=None,
        description="How drift in the run state is corrected: always (start it whatever stopped it), "
        "rerunOnFailure (start it after a crash, leave it off after a shutdown or a destroy by hand), "
        "manual (started by the first define when state is running, then left to people) or halted "
        "(kept off). Null, the default: always when state is running, halted when stopped.",
    )
    autostart: Flag = Field(
        default=False, description="Whether libvirt starts the domain when the host boots; default false."
    )
    type: Literal["kvm", "qemu"] = Field(
        default="kvm", description="Hypervisor: kvm (hardware acceleration) or qemu (emulation); default kvm."
    )
    arch: Annotated[str, Field(pattern=r"^[a-z0-9_]+$")] = Field(
        default="x86_64", description="Guest CPU architecture; default x86_64."
    )
    machine: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$")] | None = Field(
        default=None,
        description="Machine type (e.g. q35, pc-q35-7.2); null lets libvirt choose its default.",
    )
    boot: Boot = Field(
        default_factory=Boot, description="Direct kernel boot; left out, the domain boots from its disks."
    )
    disks: tuple[Disk, ...] = Field(
        default=(),
        description="Disk images to attach; those without a target are named in order (vda, vdb, ...).",
    )
    interfaces: tuple[Interface, ...] = Field(
        default=(),
        description="NICs, each on a libvirt network or a host bridge, in the order the guest sees them.",
    )
    balloon: Literal["virtio", "none"] = Field(
        default="virtio",
        description="Memory balloon device; without one (none) currentMemory cannot change live.",
    )
    cloud_init: CloudInit | None = Field(
        default=None,
        description="A cloud-init NoCloud seed built from files in the manifest tree, uploaded to a "
        "pool as <domain>-cidata.iso and attached as a read-only cdrom; plans show its digest only.",
    )
    graphics: Graphics | None = Field(
        default=None,
        description="A VNC or SPICE console; left out: new domains get none, existing ones keep theirs.",
    )
    serial: Flag | None = Field(
        default=None,
        description="true: a serial port with a console (virsh console NAME); false: none; left out: "
        "new domains get one, existing ones keep what they have.",
    )
    deletion_protection: Flag = Field(
        default=False,
        description="Never undefine this domain, even when it leaves the manifests with prune on; "
        "recorded in its ownership metadata, so it holds after the manifest is gone. Default false.",
    )

    @model_validator(mode="before")
    @classmethod
    def _halted_means_stopped(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("state") is None and data.get("runStrategy") == "halted":
            return {**data, "state": "stopped"}
        return data

    @field_validator("run_strategy")
    @classmethod
    def _strategy_agrees_with_state(cls, strategy: str | None, info: ValidationInfo) -> str | None:
        state = info.data.get("state")
        if strategy in ("always", "rerunOnFailure") and state == "stopped":
            raise ValueError(
                f"runStrategy {strategy} keeps the domain running, but state is stopped: use "
                "runStrategy halted to keep it off, or manual to leave it to people"
            )
        if strategy == "halted" and state == "running":
            raise ValueError(
                "runStrategy halted keeps the domain off, but state is running: use state stopped"
            )
        return strategy

    @model_validator(mode="before")
    @classmethod
    def _current_memory_defaults_to_memory(cls, data: Any) -> Any:
        if isinstance(data, dict) and "currentMemory" not in data and "current_memory" not in data:
            try:
                parse_size(data.get("memory"))
            except ValueError:
                # The model fails on 'memory' anyway; a placeholder keeps the error reported once.
                return {**data, "currentMemory": "0KiB"}
            return {**data, "currentMemory": data["memory"]}
        return data

    @field_validator("current_memory")
    @classmethod
    def _current_within_memory(cls, current: int, info: ValidationInfo) -> int:
        memory = info.data.get("memory")
        if memory is not None and current > memory:
            raise ValueError(
                f"currentMemory {format_size(current)} is larger than memory {format_size(memory)}"
            )
        return current

    @field_validator("disks", mode="before")
    @classmethod
    def _assign_targets(cls, disks: Any) -> Any:
        """Name the disks the manifest leaves unnamed after their bus: vda, vdb, sda, hda..."""
        if not isinstance(disks, list | tuple):
            return disks
        taken: set[str] = {
            d["target"] for d in disks if isinstance(d, dict) and isinstance(d.get("target"), str)
        }
        taken |= {d.target for d in disks if isinstance(d, Disk) and d.target}
        filled = []
        for disk in disks:
            named = disk
            if isinstance(disk, dict) and disk.get("target") is None:
                bus = disk.get("bus", "virtio")
                prefix = BUS_TARGET_PREFIX.get(bus) if isinstance(bus, str) else None
                if prefix is not None:  # an unknown bus is reported by the Disk model itself
                    named = {**disk, "target": _next_target(prefix, taken)}
                    taken.add(named["target"])
            elif isinstance(disk, Disk) and disk.target is None:
                target = _next_target(BUS_TARGET_PREFIX[disk.bus], taken)
                named = disk.model_copy(update={"target": target})
                taken.add(target)
            filled.append(named)
        return filled

    @field_validator("disks")
    @classmethod
    def _unique_targets(cls, disks: tuple[Disk, ...]) -> tuple[Disk, ...]:
        targets = [disk.target for disk in disks]
        for target in targets:
            if targets.count(target) > 1:
                raise ValueError(f"two disks use target {target!r}")
        volumes = [disk.volume.key for disk in disks if disk.volume is not None]
        for volume in volumes:
            if volumes.count(volume) > 1:
                raise ValueError(f"two disks use volume {volume}")
        return disks

    @field_validator("cloud_init")
    @classmethod
    def _seed_pool(cls, cloud_init: CloudInit | None, info: ValidationInfo) -> CloudInit | None:
        """The seed's pool defaults to the pool of the first volume disk; a domain without one names it."""
        if cloud_init is None or cloud_init.pool is not None or "disks" not in info.data:
            return cloud_init
        pools = [disk.volume.pool for disk in info.data["disks"] if disk.volume is not None]
        if not pools:
            raise ValueError(
                "pool is required: no disk of the domain has a volume whose pool the seed could go to"
            )
        return cloud_init.model_copy(update={"pool": pools[0]})

    @property
    def strategy(self) -> RunStrategy:
        """The run strategy in force: the one given, else what state says (always or halted)."""
        return self.run_strategy or ("always" if self.state == "running" else "halted")

    def spec_hash(self) -> str:
        """A short, stable hash of the spec, recorded in the ownership metadata."""
        # Field order is fixed by the model, so pydantic's own JSON is canonical (and fast).
        return hashlib.sha256(self.model_dump_json(by_alias=True).encode()).hexdigest()[:16]


def _next_target(prefix: str, taken: set[str]) -> str:
    """The first free disk name for a bus prefix: vda, vdb, ... vdz, vdaa, ..."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    for index in range(26 * 27):
        suffix = letters[index] if index < 26 else letters[index // 26 - 1] + letters[index % 26]
        if prefix + suffix not in taken:
            return prefix + suffix
    raise ValueError(f"no free disk target for prefix {prefix!r}")


class DomainMetadata(Model):
    """Identity of a Domain document: its libvirt name and the host it lives on."""

    name: Name = Field(description="The libvirt domain name, unique on its host.")
    host: Name | None = Field(
        default=None,
        description="Name of the Host document this domain lives on; may be left out when there is "
        "exactly one host.",
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="Free-form string labels for people and tools; not interpreted."
    )
    annotations: Annotations = Field(
        default_factory=dict,
        description='Free-form notes; virt-reconcile.dev/suspend: "true" leaves the domain alone '
        "(no define, update, start, stop or undefine; drift is not corrected).",
    )


class Domain(Model):
    """A VM that should exist on a host."""

    api_version: Literal["virt-reconcile/v1"] = Field(
        description="Manifest format version; must be virt-reconcile/v1."
    )
    kind: Literal["Domain"] = Field(description="Document type: Domain describes a VM.")
    metadata: DomainMetadata = Field(description="The domain's name, its host and labels.")
    spec: DomainSpec = Field(description="The VM's desired configuration and run state.")

    @property
    def name(self) -> str:
        """The libvirt domain name."""
        return self.metadata.name

    @property
    def suspended(self) -> bool:
        """Whether a suspend annotation leaves this domain alone."""
        return suspended(self.metadata.annotations)


class Owner(Model):
    """Ownership metadata written into every domain the reconciler defines (docs/design.md §2.6)."""

    manifest: str = Field(description="File of the manifest that defines the domain, relative to its root.")
    revision: str = Field(
        default="", description="Revision (git commit) of the manifests last applied; empty when unknown."
    )
    spec_hash: str = Field(
        default="", description="Short hash of the spec last applied, to notice changes made outside git."
    )
    root: str = Field(
        default="",
        description="Identity of the manifest root that owns the domain (git repository and folder, or "
        "a folder): only a plan of that whole root may undefine it. Empty on domains older than it.",
    )
    host: str = Field(
        default="",
        description="Name of the Host entry the domain was defined through: another Host entry never "
        "undefines it. Empty on domains older than it.",
    )
    deletion_protection: bool = Field(
        default=False, description="The manifest said deletionProtection: true; never undefined."
    )
    pending: bool = Field(
        default=False,
        description="Adopted by import and not yet applied from the manifests: never pruned until a "
        "revision that holds it has been applied (or pendingUntil passes).",
    )
    pending_until: str = Field(
        default="",
        description="When an import's pending mark lapses (ISO 8601, UTC); empty: when first applied.",
    )
    restart_instance: int = Field(
        default=-1,
        description="Domain id of the instance that ran when a definition needing a restart was written "
        "(-1: none); the restart is pending while the running instance's own definition differs.",
    )
    restart_waits: str = Field(default="", description="What waits for that restart (vcpus 2 → 1; ...).")
    off_on_purpose: str = Field(
        default="",
        description="Why a rerunOnFailure domain was last seen shut off on purpose (shutdown, destroyed "
        "...), kept for when libvirt forgets it (a libvirtd restart, a host reboot); empty: not off so.",
    )
    delete_volumes: str = Field(
        default="",
        description="The volumes (pool/name, space-separated) of disks that said deleteVolumes: true: "
        "deleted after the domain is undefined, even once its manifest is gone.",
    )
    seed: str = Field(
        default="", description="Digest of the cloud-init seed last uploaded for the domain; empty: none."
    )
    graphics_password_file: str = Field(
        default="", description="The graphics passwordFile whose content the definition was sent with."
    )

    def volumes_to_delete(self) -> frozenset[str]:
        """The ``pool/name`` of each volume deleted with the domain."""
        return frozenset(self.delete_volumes.split())

    def pending_at(self, now: str) -> bool:
        """Whether the import's pending mark still protects the domain at ``now`` (ISO 8601, UTC)."""
        return self.pending and (not self.pending_until or now < self.pending_until)
