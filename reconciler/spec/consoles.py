"""How people reach a domain: its graphical console (VNC or SPICE) and its serial console.

The graphics password is never in a manifest: ``passwordFile`` names a file on the machine
virt-reconcile runs on (the host itself, for the daemon), read only when a definition is sent to
libvirt. Plans, saved plans, snapshots, logs and ``/status`` hold the file's path, never its content.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator

from reconciler.spec.fieldtypes import Count, Model

#: The lowest port a VNC display takes (QEMU's display 0).
VNC_BASE_PORT = 5900


class Graphics(Model):
    """A graphical console: VNC or SPICE, listening on one address of the host."""

    type: Literal["vnc", "spice"] = Field(description="vnc or spice.")
    listen: Annotated[str, Field(min_length=2, max_length=64)] = Field(
        default="127.0.0.1",
        description="IP address of the host the console listens on; default 127.0.0.1 (reached "
        "through an SSH tunnel). 0.0.0.0 opens it to every network of the host.",
    )
    port: Literal["auto"] | Annotated[Count, Field(ge=1024, le=65535)] = Field(
        default="auto",
        description="TCP port: auto (libvirt picks a free one from 5900) or a number (VNC: from 5900).",
    )
    password_file: Annotated[str, Field(min_length=2, max_length=4096, pattern=r"^/")] | None = Field(
        default=None,
        description="Absolute path of a file holding the console password, on the machine "
        "virt-reconcile runs on; read when the definition is sent, never shown or stored elsewhere. "
        "Left out: the domain keeps whatever password it has.",
    )

    @field_validator("listen")
    @classmethod
    def _address(cls, listen: str) -> str:
        try:
            return str(ipaddress.ip_address(listen))
        except ValueError:
            raise ValueError(f"{listen!r} is not an IP address (e.g. 127.0.0.1, 0.0.0.0, ::1)") from None

    @field_validator("port")
    @classmethod
    def _vnc_display(cls, port: int | str, info: ValidationInfo) -> int | str:
        if isinstance(port, int) and info.data.get("type") == "vnc" and port < VNC_BASE_PORT:
            raise ValueError(f"a VNC port is {VNC_BASE_PORT} or above (QEMU's display numbers), not {port}")
        return port
