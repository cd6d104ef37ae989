"""``daemon``: reconcile continuously from a git repository or a directory, until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import re
import signal
from pathlib import Path

from reconciler.cli.inputs import connector

GIT_URL = re.compile(r"^(file|ssh|https?|git)://|^[\w.-]+@[\w.-]+:")


def run(args: argparse.Namespace) -> int:
    """Run the daemon in the foreground; its exit code."""
    from reconciler.adapters import libvirt_host
    from reconciler.adapters.watch import watch_directory
    from reconciler.daemon import Daemon, DaemonConfig, DirectorySource, GitSource, configure_logging

    state_dir = Path(args.state_dir)
    secret = Path(args.webhook_secret_file).read_bytes().strip() if args.webhook_secret_file else None
    config = DaemonConfig(
        hosts=args.host or [],
        interval=args.interval,  # seconds, listen (host, port): checked by the parser's types
        resync=args.resync,
        listen=args.listen,
        state_dir=state_dir,
        webhook_secret=secret,
        allow_delete=args.allow_delete,
        shutdown_timeout=args.shutdown_timeout,
        snapshot_to=Path(args.snapshot_to) if args.snapshot_to else None,
        snapshot_command=args.snapshot_command,
    )
    source = (
        GitSource(args.source, args.branch, args.path, state_dir)
        if GIT_URL.match(args.source)
        else DirectorySource(Path(args.source))
    )
    daemon = Daemon(
        config,
        source,
        connector(),
        events=libvirt_host.DomainEvents,
        watch=watch_directory,
    )
    configure_logging()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: daemon.stop.set())
    return daemon.run()
