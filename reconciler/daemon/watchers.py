"""Domain events from the hosts (libvirt's event connections): each one triggers a drift pass."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

from reconciler.spec.manifests import ManifestSet
from reconciler.spec.models import Host

#: Opens a host's event connection; calls back ``on_event(domain, what)`` from libvirt's thread.
EventsFactory = Callable[[Host, Callable[[str, str], None]], Any]


class DomainWatchers:
    """One event connection per real (non-sandbox) host, kept open; ``on_drift(host)`` per event."""

    def __init__(self, factory: EventsFactory | None, on_drift: Callable[[str], None]) -> None:
        self.factory = factory
        self.on_drift = on_drift
        self._watchers: dict[str, Any] = {}

    def ensure(self, manifests: ManifestSet, hosts: Iterable[str]) -> None:
        """Listen on each of ``hosts``, re-opening lost connections."""
        if self.factory is None:
            return
        for name in hosts:
            host = manifests.hosts[name]
            if host.spec.address.is_sandbox:
                continue  # the sandbox lives in this process only while a reconcile runs
            watcher = self._watchers.get(name)
            if watcher is None:
                watcher = self._watchers[name] = self.factory(host, self._on_event(name))
            watcher.ensure()

    def _on_event(self, host: str) -> Callable[[str, str], None]:
        def on_event(domain: str, what: str) -> None:
            self.on_drift(host)

        return on_event

    def close(self) -> None:
        """Close every event connection."""
        for watcher in self._watchers.values():
            with contextlib.suppress(Exception):
                watcher.close()
        self._watchers.clear()
