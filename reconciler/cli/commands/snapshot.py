"""``snapshot``: the observed state of hosts as JSON, for plans made with no access to them."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from reconciler.cli.exit_codes import EXIT_OK
from reconciler.cli.inputs import load, selector
from reconciler.engine.reconcile import select_hosts
from reconciler.files.atomic import write_atomically
from reconciler.report import Printer
from reconciler.report import escape_markup as escape


def run(args: argparse.Namespace) -> int:
    """Write one snapshot file holding every selected host, read side by side (``--host-parallel``);
    a host that cannot be read fails the command (a snapshot missing a host would plan it away)."""
    from concurrent.futures import ThreadPoolExecutor

    from reconciler.adapters.libvirt import host as libvirt_host
    from reconciler.engine.preflight import wanted_paths
    from reconciler.offline.snapshot import Snapshot, SnapshotHost, snapshot_host

    manifests = load(args.path, args)

    def read(name: str) -> SnapshotHost:
        host = manifests.hosts[name]
        with libvirt_host.open_host(host, write=False) as hypervisor:
            # The environment too, so a plan against the snapshot runs the same pre-flight checks.
            environment = hypervisor.environment(wanted_paths(manifests.domains[name].values()))
            return snapshot_host(host.spec.uri, hypervisor.observe(), environment)

    names = select_hosts(manifests, args.host, selector(args))
    with ThreadPoolExecutor(max_workers=min(args.host_parallel, max(len(names), 1))) as pool:
        hosts = dict(zip(names, pool.map(read, names), strict=True))
    snapshot = Snapshot(taken_at=datetime.now(UTC).isoformat(timespec="seconds"), hosts=hosts)
    write_atomically(Path(args.out), snapshot.model_dump_json(by_alias=True, indent=2) + "\n", mode=0o644)
    domains = sum(len(h.domains) for h in hosts.values())
    Printer(sys.stderr).print(f"wrote {escape(args.out)}: {len(hosts)} host(s), {domains} domain(s)")
    return EXIT_OK
