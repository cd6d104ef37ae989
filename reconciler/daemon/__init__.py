"""The GitOps daemon (``virt-reconcile daemon``): what the CLI and tests use of it.

Modules: :mod:`~.loop` (the loop and its triggers), :mod:`~.loader` (manifests within a time
budget), :mod:`~.decision` (what a pass does),
:mod:`~.verdict` (a host's result, retry or not), :mod:`~.retries` (backoff timers),
:mod:`~.sources` (git or a directory),
:mod:`~.status` (``/status``), :mod:`~.metrics`, :mod:`~.snapshots`, :mod:`~.http`,
:mod:`~.watchers` (domain events), :mod:`~.config`, :mod:`~.logs`.
"""

from reconciler.daemon.config import DaemonConfig
from reconciler.daemon.decision import Trigger
from reconciler.daemon.logs import configure_logging
from reconciler.daemon.loop import Daemon
from reconciler.daemon.sources import DirectorySource, GitSource, Source
from reconciler.daemon.status import HostStatus

__all__ = [
    "Daemon",
    "DaemonConfig",
    "DirectorySource",
    "GitSource",
    "HostStatus",
    "Source",
    "Trigger",
    "configure_logging",
]
