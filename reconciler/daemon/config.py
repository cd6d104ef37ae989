"""What ``virt-reconcile daemon`` was told (its command-line values are checked by ``cli.parser``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from reconciler.daemon.http import Limits
from reconciler.daemon.notices import Notifications
from reconciler.daemon.retries import BASE_DELAY, MAX_BACKOFF
from reconciler.spec.hosturi import UriRules
from reconciler.spec.labels import Selector


@dataclass
class DaemonConfig:
    """Everything ``virt-reconcile daemon`` was told."""

    hosts: list[str] = field(default_factory=list)
    selector: Selector = field(default_factory=Selector)  # hosts picked by labels (with hosts: both)
    host_parallel: int = 16  # host lanes reconciling at once
    interval: float = 30.0
    resync: float = 600.0
    listen: tuple[str, int] = ("127.0.0.1", 9469)
    state_dir: Path = Path("/var/lib/virt-reconcile")
    webhook_secret: bytes | None = None
    allow_delete: bool = False
    shutdown_timeout: float = 60.0
    snapshot_to: Path | None = None  # also copy each host's snapshot into this folder
    snapshot_command: str | None = None  # run this with the snapshot file's path after each write
    load_timeout: float = 60.0  # a revision whose manifests take longer to load is an error
    uri_rules: UriRules = field(default_factory=UriRules)  # what the operator lets Host URIs use
    http: Limits = field(default_factory=Limits)  # what one network peer may cost
    retry_base: float = BASE_DELAY  # the first retry's delay; it doubles up to retry_cap (tests shorten both)
    retry_cap: float = MAX_BACKOFF
    notify: Notifications = field(default_factory=Notifications)  # --notify receivers, delivery limits
    #: The time sync windows are judged at (tests set it).
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
