"""``plan``: what apply would change, against the live hosts or snapshot files; optionally saved."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.cli.exit_codes import EXIT_CHANGES, EXIT_ERROR, EXIT_OK, EXIT_REFUSED
from reconciler.cli.inputs import ask_git, connector, early_opens, load, reconcile_options, selector
from reconciler.engine.apply import Hooks
from reconciler.engine.reconcile import Connector, Outcome, reconcile, select_hosts
from reconciler.files.content_cache import ContentCache
from reconciler.report import Printer, render_host_text, summary_line
from reconciler.report import escape_markup as escape

if TYPE_CHECKING:
    from reconciler.adapters.gitfacts import GitFacts
    from reconciler.offline.snapshot import SnapshotHypervisor
    from reconciler.spec.manifests import ManifestSet
    from reconciler.spec.models import Host


def run(args: argparse.Namespace) -> int:
    """Print the plan; exit 0 no changes, 2 changes, 3 refused by policy, 1 a host failed."""
    git = ask_git(args.path)  # answers while the manifests load
    out = Printer(sys.stdout)
    if args.state:  # no host to open: snapshot files
        manifests = load(args.path, args)
        outcome = _plan(args, manifests, snapshot_connector(Path(args.state)), git, out)
    else:
        with early_opens(args) as early:  # the hosts open while the manifests load
            manifests = load(args.path, args, early)
            outcome = _plan(args, manifests, connector(early), git, out)
    return _show(args, manifests, outcome, out)


def _plan(
    args: argparse.Namespace, manifests: ManifestSet, connect: Connector, git: GitFacts, out: Printer
) -> Outcome:
    """The plan of the selected hosts, each host's text printed as soon as it is planned."""
    select_hosts(manifests, args.host, selector(args))
    text = args.format == "text"
    return reconcile(
        manifests,
        connect,
        reconcile_options(args, manifests, git),
        Hooks(on_plan=(lambda host: render_host_text(out, host, blank_after=True)) if text else None),
        parse_cache=None if args.state else ContentCache.default("domains"),
    )


def _show(args: argparse.Namespace, manifests: ManifestSet, outcome: Outcome, out: Printer) -> int:
    """The rest of the plan's output (its summary, or the whole plan as markdown or JSON), the plan
    saved with ``--out``, and the exit code."""
    text = args.format == "text"
    if text:
        out.print(f"[bold]{escape(summary_line(outcome.plan))}[/bold]")
    elif args.format == "markdown":
        from reconciler.report import render_markdown

        sys.stdout.write(render_markdown(outcome.plan))
    else:
        from reconciler.report import render_json

        sys.stdout.write(render_json(outcome.plan))
    if args.out:
        save(Path(args.out), outcome, manifests)
    if outcome.failed:
        return EXIT_ERROR
    if outcome.plan.refused:
        return EXIT_REFUSED
    return EXIT_CHANGES if outcome.plan.has_changes else EXIT_OK


def snapshot_connector(path: Path) -> Connector:
    """Hosts read from snapshot files: plans with no connection to any hypervisor."""
    from reconciler.errors import PermanentHostError
    from reconciler.offline.snapshot import SnapshotHypervisor, load_snapshots

    hosts = load_snapshots(path)

    @contextmanager
    def connect(host: Host, _write: bool) -> Iterator[SnapshotHypervisor]:
        if host.name not in hosts:
            raise PermanentHostError(host.name, f"not in the snapshot {path}")
        yield SnapshotHypervisor(host.name, hosts[host.name])

    return connect


def save(path: Path, outcome: Outcome, manifests: ManifestSet) -> None:
    """Write the plan for ``apply --plan``, with what it was made against, signed with this
    machine's plan signing key (made on first use; ``$VIRT_RECONCILE_PLAN_KEY_FILE`` names another)."""
    from reconciler.files.keys import signing_key
    from reconciler.offline.savedplan import save_plan

    save_plan(
        path,
        outcome.plan,
        specs={
            name: manifests.hosts[name].spec
            for name, host in outcome.plan.hosts.items()
            if host.observed is not None
        },
        key=signing_key(),
        pools={
            name: {pool: p.spec.overcommit.ratio for pool, p in found.items()}
            for name, found in manifests.pools.items()
        },
    )
