"""A domain's disk in a manifest: an image at a path, or a volume made in one of its host's pools."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from reconciler.spec.fieldtypes import Flag, Model
from reconciler.spec.storage import Volume

TARGET_PATTERN = r"^[a-z]{2,3}[a-z]{1,3}$"


class Disk(Model):
    """A disk of the domain: an image file or block device at ``path``, or a ``volume`` made in one
    of the host's storage pools for it (exactly one of the two)."""

    path: Annotated[str, Field(min_length=1)] | None = Field(
        default=None,
        description="Absolute path of an existing image on the host; under /dev it is attached as a "
        "block device. Exactly one of path, volume.",
    )
    volume: Volume | None = Field(
        default=None,
        description="A volume made in a pool for this disk (empty, or from a base image), grown when "
        "its size grows, never shrunk. Exactly one of path, volume.",
    )
    format: Annotated[str, Field(pattern=r"^[a-z0-9]+$")] = Field(
        default="qcow2", description="Image format as QEMU names it (qcow2, raw, ...); default qcow2."
    )
    bus: Literal["virtio", "sata", "scsi", "ide", "usb"] = Field(
        default="virtio", description="Bus the guest sees the disk on; default virtio."
    )
    target: Annotated[str, Field(pattern=TARGET_PATTERN)] | None = Field(
        default=None,
        description="Device name in the guest (vda, sdb, ...); null takes the next free one for the bus.",
    )
    delete_volumes: Flag | None = Field(
        default=None,
        description="true: the volume is deleted once the domain is undefined (pruned); left out or "
        "false: it is kept. A volume disk only.",
    )

    @field_validator("path")
    @classmethod
    def _absolute(cls, path: str | None) -> str | None:
        if path is not None and not path.startswith("/"):
            raise ValueError(f"disk path {path!r} must be absolute")
        return path

    @field_validator("delete_volumes")
    @classmethod
    def _false_is_unset(cls, delete: bool | None) -> bool | None:
        """``false`` is the default said out loud: one value for it keeps plans free of noise."""
        return True if delete else None

    @model_validator(mode="after")
    def _one_source(self) -> Disk:
        if (self.path is None) == (self.volume is None):
            raise ValueError("a disk needs exactly one of 'path' or 'volume'")
        if self.delete_volumes and self.volume is None:
            raise ValueError("deleteVolumes is for a volume disk (a path is never deleted)")
        source = self.volume.from_ if self.volume is not None else None
        if source is not None and source.mode == "backing" and self.format != "qcow2":
            raise ValueError(
                f"a volume made with from.mode backing is a qcow2 overlay: format must be qcow2, "
                f"not {self.format!r}"
            )
        return self

    @property
    def source(self) -> str:
        """What the disk is, for people: its path, or ``volume pool/name``."""
        return self.path if self.path is not None else f"volume {self.volume.key if self.volume else '?'}"
