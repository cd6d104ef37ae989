"""Storage manifests: the ``Pool`` document and the volume a Domain disk may ask for (docs/design.md).

A Pool is a libvirt storage pool a host must have (a folder, or an LVM volume group); a volume is a
disk image made in a pool for one domain: empty, a qcow2 overlay on a base image (``backing``) or a
full copy of one (``clone``), at a given virtual size that may grow later but never shrink.
"""

from __future__ import annotations

import posixpath
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from reconciler.spec.annotations import Annotations
from reconciler.spec.fieldtypes import Flag, Model, Name, Size
from reconciler.spec.hostpolicy import Ratio

#: A volume name: a file name in a dir pool, a logical volume name in an LVM pool.
VOLUME_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"
_DEFINITION = "libvirt definition"
#: Validation context for a spec read back from libvirt: its volumes carry no size (see ``Volume``).
FROM_DEFINITION = {_DEFINITION: True}


class PoolOvercommit(Model):
    """How far a pool's thin-provisioned volumes may promise more than it holds."""

    ratio: Ratio = Field(
        default=1.0,
        description="storage.commit: the virtual sizes of every volume in the pool may add up to its "
        "capacity times this; default 1.0 (no overcommit).",
    )


class PoolSpec(Model):
    """What the pool is and where its volumes live."""

    type: Literal["dir", "logical"] = Field(
        description="dir: a folder of image files; logical: an LVM volume group, one logical volume each."
    )
    path: Annotated[str, Field(min_length=2, pattern=r"^/")] | None = Field(
        default=None,
        description="dir: the folder holding the images (made when missing); logical: /dev/VGNAME "
        "(default /dev/ followed by the pool's name).",
    )
    devices: tuple[Annotated[str, Field(pattern=r"^/dev/")], ...] = Field(
        default=(),
        description="logical: the physical devices of the volume group; it is built on them only when "
        "none holds data (a device with a signature is never formatted).",
    )
    autostart: Flag = Field(
        default=True, description="Whether libvirt starts the pool with the host; default true."
    )
    overcommit: PoolOvercommit = Field(
        default_factory=PoolOvercommit, description="The pool's storage.commit limit."
    )

    @field_validator("path")
    @classmethod
    def _path_fits_type(cls, path: str | None, info: ValidationInfo) -> str | None:
        """A dir pool needs its folder; a logical pool's path is /dev/VGNAME, nothing deeper."""
        kind = info.data.get("type")
        if path is None:
            if kind == "dir":
                raise ValueError("a dir pool needs 'path': the folder holding its images")
            return None
        path = posixpath.normpath(path)
        if kind == "logical" and posixpath.dirname(path) != "/dev":
            raise ValueError(f"a logical pool's path is /dev/VGNAME (its volume group), not {path!r}")
        return path

    @field_validator("devices")
    @classmethod
    def _devices_only_for_logical(cls, devices: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        """Devices are the physical volumes of an LVM pool; a dir pool has none."""
        if devices and info.data.get("type") == "dir":
            raise ValueError("only a logical pool has devices (the physical volumes of its volume group)")
        if len(set(devices)) != len(devices):
            raise ValueError("a device is named twice")
        return devices


class PoolMetadata(Model):
    """Identity of a Pool document: its libvirt name and the host it lives on."""

    name: Name = Field(description="The libvirt pool name, unique on its host.")
    host: Name | None = Field(
        default=None,
        description="Name of the Host document this pool lives on; may be left out when there is "
        "exactly one host.",
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="Free-form string labels; not interpreted."
    )
    annotations: Annotations = Field(default_factory=dict, description="Free-form notes; not interpreted.")


class Pool(Model):
    """A storage pool one host must have, defined, started and autostarted as its spec says."""

    api_version: Literal["virt-reconcile/v1"] = Field(description="Always virt-reconcile/v1.")
    kind: Literal["Pool"] = Field(description="Document type: Pool describes a libvirt storage pool.")
    metadata: PoolMetadata = Field(description="The pool's name and host.")
    spec: PoolSpec = Field(description="The pool's type, place and overcommit limit.")

    @property
    def name(self) -> str:
        """The libvirt pool name."""
        return self.metadata.name

    @property
    def target(self) -> str:
        """Where its volumes live: the dir pool's folder, or /dev/VGNAME (default /dev/NAME)."""
        return self.spec.path or f"/dev/{self.metadata.name}"

    @property
    def volume_group(self) -> str:
        """A logical pool's volume group name: the last part of its target."""
        return posixpath.basename(self.target)


class VolumeSource(Model):
    """The base image a volume is made from."""

    path: Annotated[str, Field(min_length=2, pattern=r"^/")] = Field(
        description="Absolute path of the base image on the host (readable by QEMU for backing)."
    )
    mode: Literal["backing", "clone"] = Field(
        default="backing",
        description="backing: a qcow2 overlay whose backing file is the base image (allocates almost "
        "nothing at first); clone: a full copy (allocates its whole size); default backing.",
    )


class Volume(Model):
    """A disk image made in a pool for this disk."""

    pool: Name = Field(description="Name of a Pool on the domain's host.")
    name: Annotated[str, Field(pattern=VOLUME_NAME_PATTERN)] = Field(
        description="The volume's name in the pool (a file name in a dir pool)."
    )
    size: Annotated[Size, Field(gt=0)] | None = Field(
        default=None,
        description="Virtual size, e.g. 20GiB; may grow later (live when the domain runs), never shrink. "
        "Required in a manifest (null only in a disk read back from libvirt, which records no size).",
    )
    from_: VolumeSource | None = Field(
        default=None, alias="from", description="The base image it is made from; null: an empty volume."
    )

    #: The schema says what a manifest must give, size included (see ``_size_given``).
    model_config = ConfigDict(json_schema_extra={"required": ["pool", "name", "size"]})

    @field_validator("size")
    @classmethod
    def _size_given(cls, size: int | None, info: ValidationInfo) -> int | None:
        """A manifest gives the size; a domain's libvirt definition names the volume only, so a disk
        read back from one (validated with :data:`FROM_DEFINITION`) has none."""
        if size is None and not (info.context or {}).get(_DEFINITION):
            raise ValueError("a volume needs a size, e.g. 20GiB")
        return size

    @property
    def key(self) -> str:
        """``pool/name``: the volume's identity on its host (neither part may hold a slash)."""
        return f"{self.pool}/{self.name}"
