"""What ``virt-reconcile daemon`` was told (its command-line values are checked by ``cli.parser``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class DaemonConfig:
    """Everything ``virt-reconcile daemon`` was told."""

    hosts: list[str] = field(default_factory=list)
    interval: float = 30.0
    resync: float = 600.0
    listen: tuple[str, int] = ("127.0.0.1", 9469)
    state_dir: Path = Path("/var/lib/virt-reconcile")
    webhook_secret: bytes | None = None
    allow_delete: bool = False
    shutdown_timeout: float = 60.0
    snapshot_to: Path | None = None  # also copy each host's snapshot into this folder
    snapshot_command: str | None = None  # run this with the snapshot file's path after each write
