"""``daemon``: reconcile continuously from a git repository or a directory, until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import re
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.cli.inputs import connector, selector, uri_rules
from reconciler.errors import DaemonConfigError

if TYPE_CHECKING:
    from reconciler.daemon.notices import Notifications, Receiver

GIT_URL = re.compile(r"^(file|ssh|https?|git)://|^[\w.-]+@[\w.-]+:")


def webhook_secret(path: str | None) -> bytes | None:
    """The webhook's HMAC secret from ``path`` (None: no webhook). An empty or blank file is refused:
    an empty key would accept any body signed with the empty key, i.e. by anyone."""
    if path is None:
        return None
    secret = Path(path).read_bytes().strip()
    if not secret:
        raise DaemonConfigError(
            f"--webhook-secret-file {path} is empty: write a secret into it "
            "(e.g. openssl rand -hex 32 > FILE), or leave the option out to turn the webhook off"
        )
    return secret


def notifications(receivers: list[Receiver], *, git: bool) -> Notifications:
    """The ``--notify`` receivers (checked by the parser), each named apart in logs and metrics. A
    GitHub commit status needs a commit: with a directory source, that receiver is refused."""
    from reconciler.daemon.notices import Notifications, ReceiverKind, named_apart

    github = next((r for r in receivers if r.kind is ReceiverKind.GITHUB), None)
    if github is not None and not git:
        raise DaemonConfigError(
            f"--notify {github.name} sets commit statuses, which needs a git --source, not a directory"
        )
    return Notifications(named_apart(receivers))


def run(args: argparse.Namespace) -> int:
    """Run the daemon in the foreground; its exit code."""
    from reconciler.adapters.libvirt.events import DomainEvents
    from reconciler.adapters.watch import watch_directory
    from reconciler.daemon import Daemon, DaemonConfig, DirectorySource, GitSource, configure_logging
    from reconciler.daemon.sources import RevisionChecks

    state_dir = Path(args.state_dir)
    secret = webhook_secret(args.webhook_secret_file)
    config = DaemonConfig(
        hosts=args.host or [],
        selector=selector(args),
        host_parallel=args.host_parallel,
        interval=args.interval,  # seconds, listen (host, port): checked by the parser's types
        resync=args.resync,
        listen=args.listen,
        state_dir=state_dir,
        webhook_secret=secret,
        allow_delete=args.allow_delete,
        shutdown_timeout=args.shutdown_timeout,
        snapshot_to=Path(args.snapshot_to) if args.snapshot_to else None,
        snapshot_command=args.snapshot_command,
        uri_rules=uri_rules(args),
        notify=notifications(args.notify or [], git=bool(GIT_URL.match(args.source))),
    )
    checks = RevisionChecks.from_options(args.verify_signatures, args.require_fast_forward)
    source = (
        GitSource(args.source, args.branch, args.path, state_dir, checks)
        if GIT_URL.match(args.source)
        else DirectorySource(Path(args.source), checks)
    )
    daemon = Daemon(
        config,
        source,
        connector(),
        events=DomainEvents,
        watch=watch_directory,
    )
    configure_logging(fmt=args.log_format)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: daemon.stop.set())
    return daemon.run()
