"""Storage manifests: the ``Pool`` document and the volume a Domain disk may ask for (docs/design.md).

A Pool is a libvirt storage pool a host must have (a folder, or an LVM volume group); a volume is a
disk image made in a pool for one domain: empty, a qcow2 overlay on a base image (``backing``) or a
full copy of one (``clone``), at a given virtual size that may grow later but never shrink.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from reconciler.spec.annotations import Annotations
from reconciler.spec.fieldtypes import Flag, Model, Name, Size
from reconciler.spec.hostpolicy import Ratio

#: A volume name: a file name in a dir pool, a logical volume name in an LVM pool.
VOLUME_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"


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
    size: Annotated[Size, Field(gt=0)] = Field(
        description="Virtual size, e.g. 20GiB; may grow later (live when the domain runs), never shrink."
    )
    from_: VolumeSource | None = Field(
        default=None, alias="from", description="The base image it is made from; null: an empty volume."
    )
