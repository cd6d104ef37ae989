"""Each host's state after a pass, as a snapshot file other tools plan against.

``state-dir/snapshots/HOST.json`` is written after every reconcile of a host; CI jobs plan pull
requests against these files (``plan --state``) without hypervisor access. A copy can also go to
another folder (``--snapshot-to``) and a command can publish it (``--snapshot-command``).
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Iterable
from pathlib import Path

from reconciler.daemon.logs import one_line
from reconciler.engine.hypervisor import HostEnvironment, HostObservation
from reconciler.engine.preflight import wanted_paths
from reconciler.engine.reconcile import Connector
from reconciler.errors import ReconcilerError
from reconciler.files.atomic import write_atomically
from reconciler.offline.snapshot import Snapshot, snapshot_host
from reconciler.spec.models import Domain, Host

log = logging.getLogger("virt_reconcile.daemon.snapshots")

COMMAND_TIMEOUT = 120.0


class SnapshotPublisher:
    """Writes a host's snapshot into ``folder``, copies it to ``copy_to`` and runs ``command``."""

    def __init__(
        self,
        folder: Path,
        connect: Connector,
        *,
        copy_to: Path | None = None,
        command: str | None = None,
    ) -> None:
        self.folder = folder
        self.connect = connect
        self.copy_to = copy_to
        self.command = command
        self._environments: dict[str, HostEnvironment] = {}  # the last one asked of each host

    def publish(
        self, host: Host, observed: HostObservation | None, taken_at: str, domains: Iterable[Domain] = ()
    ) -> None:
        """Snapshot ``host`` as ``observed``, or as observed now when ``None`` (something was applied:
        what the plan saw is history), with its environment for the ``domains`` the manifests want
        there (asked when the host is observed anew, else the last one). A failure is logged; the
        daemon goes on."""
        try:
            if observed is None or host.name not in self._environments:
                with self.connect(host, False) as hypervisor:
                    observed = hypervisor.observe() if observed is None else observed
                    self._environments[host.name] = hypervisor.environment(wanted_paths(domains))
            environment = self._environments[host.name]
            snapshot = Snapshot(
                taken_at=taken_at, hosts={host.name: snapshot_host(host.spec.uri, observed, environment)}
            )
            text = snapshot.model_dump_json(by_alias=True, indent=2) + "\n"
            path = self.folder / f"{host.name}.json"
            write_atomically(path, text)
            if self.copy_to is not None:
                # for others to read and publish, as ``snapshot --out`` writes it (no secure values)
                write_atomically(self.copy_to / path.name, text, mode=0o644)
            if self.command:
                subprocess.run([*shlex.split(self.command), str(path)], check=True, timeout=COMMAND_TIMEOUT)
        except (ReconcilerError, OSError, subprocess.SubprocessError) as err:
            log.warning("%s: snapshot not published: %s", host.name, one_line(str(err)))
