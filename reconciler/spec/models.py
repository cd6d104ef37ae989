"""Manifest models: Host and Domain documents exactly as DESIGN §2 describes them.

Frozen pydantic models with camelCase field names and ``extra="forbid"``, so an unknown or misspelt
field is an error rather than a silently ignored setting. Sizes are bytes (whole KiB) in Python and
unit strings such as ``4GiB`` in YAML and JSON.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from reconciler.spec.hosturi import HostURI
from reconciler.spec.sizes import SIZE_PATTERN, format_size, parse_size

API_VERSION = "virt-reconcile/v1"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAC_PATTERN = r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$"
TARGET_PATTERN = r"^[a-z]{2,3}[a-z]{1,3}$"

Size = Annotated[
    int,
    BeforeValidator(parse_size),
    PlainSerializer(format_size, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": SIZE_PATTERN, "examples": ["4GiB", "512MiB"]}),
]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]

#: Disk name prefix libvirt uses for each bus, for targets the manifest leaves out.
BUS_TARGET_PREFIX: dict[str, str] = {"virtio": "vd", "sata": "sd", "scsi": "sd", "usb": "sd", "ide": "hd"}


class Model(BaseModel):
    """Base for every manifest model: immutable, camelCase, unknown fields refused."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        validate_default=True,
    )


# --------------------------------------------------------------------------------------- Host


class Capacity(Model):
    """What the host holds, overriding what libvirt reports (and the size of a new sandbox)."""

    cpus: Annotated[int, Field(ge=1)] | None = None
    memory: Size | None = None
    swap: Size | None = None


class CpuPolicy(Model):
    """CPU overcommit: sum of vCPUs <= cpus x ratio, and no domain wider than maxVcpusPerDomain."""

    ratio: Annotated[float, Field(gt=0)] = 4.0
    max_vcpus_per_domain: Annotated[int, Field(ge=1)] | None = None
    count_inactive: bool = True


class MemoryPolicy(Model):
    """Memory overcommit: sum of maximum memory <= (memory - reserved) x ratio, plus the balloon bound."""

    ratio: Annotated[float, Field(gt=0)] = 1.0
    reserved: Size = "1GiB"  # type: ignore[assignment]  # validated (validate_default) into bytes
    count_swap: bool = False
    count_ksm: bool = False


class Overcommit(Model):
    """How far the host may be overcommitted, and whether a breach refuses the plan or only warns."""

    enforcement: Literal["enforce", "warn"] = "enforce"
    cpu: CpuPolicy = Field(default_factory=CpuPolicy)
    memory: MemoryPolicy = Field(default_factory=MemoryPolicy)


class HostSpec(Model):
    """How to reach a host and what may be done to it."""

    uri: Annotated[str, Field(min_length=1)]
    capacity: Capacity = Field(default_factory=Capacity)
    prune: bool = False
    overcommit: Overcommit = Field(default_factory=Overcommit)

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

    name: Name
    labels: dict[str, str] = Field(default_factory=dict)


class Host(Model):
    """A hypervisor the reconciler manages."""

    api_version: Literal["virt-reconcile/v1"]
    kind: Literal["Host"]
    metadata: HostMetadata
    spec: HostSpec

    @property
    def name(self) -> str:
        """The host's name as domains refer to it."""
        return self.metadata.name


# ------------------------------------------------------------------------------------- Domain


class Disk(Model):
    """A disk image attached to the domain (file, or block device when the path is under /dev)."""

    path: Annotated[str, Field(min_length=1)]
    format: Annotated[str, Field(pattern=r"^[a-z0-9]+$")] = "qcow2"
    bus: Literal["virtio", "sata", "scsi", "ide", "usb"] = "virtio"
    target: Annotated[str, Field(pattern=TARGET_PATTERN)] | None = None

    @field_validator("path")
    @classmethod
    def _absolute(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError(f"disk path {path!r} must be absolute")
        return path


class Interface(Model):
    """A NIC on a libvirt network or a host bridge."""

    network: Annotated[str, Field(min_length=1)] | None = None
    bridge: Annotated[str, Field(min_length=1)] | None = None
    model: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")] | None = "virtio"
    mac: Annotated[str, Field(pattern=MAC_PATTERN)] | None = None

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

    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None


class DomainSpec(Model):
    """Everything the reconciler models about a domain; every other XML element is left alone."""

    vcpus: Annotated[int, Field(ge=1, le=4096)] = 1
    memory: Size
    current_memory: Size
    state: Literal["running", "stopped"] = "running"
    autostart: bool = False
    type: Literal["kvm", "qemu"] = "kvm"
    arch: Annotated[str, Field(pattern=r"^[a-z0-9_]+$")] = "x86_64"
    machine: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$")] | None = None
    boot: Boot = Field(default_factory=Boot)
    disks: tuple[Disk, ...] = ()
    interfaces: tuple[Interface, ...] = ()
    balloon: Literal["virtio", "none"] = "virtio"

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
        taken: set[str] = {d["target"] for d in disks if isinstance(d, dict) and d.get("target")}
        taken |= {d.target for d in disks if isinstance(d, Disk) and d.target}
        filled = []
        for disk in disks:
            named = disk
            if isinstance(disk, dict) and disk.get("target") is None:
                prefix = BUS_TARGET_PREFIX.get(disk.get("bus", "virtio"))
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
        return disks

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

    name: Name
    host: Name | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class Domain(Model):
    """A VM that should exist on a host."""

    api_version: Literal["virt-reconcile/v1"]
    kind: Literal["Domain"]
    metadata: DomainMetadata
    spec: DomainSpec

    @property
    def name(self) -> str:
        """The libvirt domain name."""
        return self.metadata.name


class Owner(Model):
    """Ownership metadata written into every domain the reconciler defines (DESIGN §2)."""

    manifest: str
    revision: str = ""
    spec_hash: str = ""
