"""What ``virt-reconcile daemon`` was told, and the parsers for its command-line values."""

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


def parse_duration(text: str) -> float:
    """``500ms``, ``30s``, ``5m``, ``1h`` (a bare number is seconds) -> seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


def parse_listen(text: str) -> tuple[str, int]:
    """``127.0.0.1:9469`` -> (host, port)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)
