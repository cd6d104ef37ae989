"""``apply``: plan, then change the hosts to match; or apply exactly a saved plan (``--plan FILE``)."""

from __future__ import annotations

import argparse
import sys

from rich.markup import escape

from reconciler.cli.exit_codes import EXIT_ERROR, EXIT_OK, EXIT_REFUSED
from reconciler.cli.inputs import connector, load, revision, selected_hosts
from reconciler.engine.apply import ApplySettings, Hooks
from reconciler.engine.plan import HostPlan
from reconciler.engine.reconcile import Outcome, ReconcileOptions, reconcile, select_hosts
from reconciler.files.content_cache import ContentCache
from reconciler.report import Printer, render_host_text, render_result, summary_line


def run(args: argparse.Namespace) -> int:
    """Exit 0 done or nothing to do, 3 refused by policy (on any host), 1 an action or host failed."""
    if args.plan:
        return _apply_saved(args)
    manifests = load(args.path)
    select_hosts(manifests, args.host)
    out = Printer(sys.stdout)
    outcome: Outcome = reconcile(
        manifests,
        connector(),
        ReconcileOptions(
            apply=True,
            hosts=selected_hosts(args),
            allow_delete=args.allow_delete,
            revision=revision(manifests),
            settings=_settings(args),
        ),
        _hooks(out, "  [dim]applying…[/dim]"),
        parse_cache=ContentCache.default("domains"),
    )
    return _verdict(out, outcome)


def _settings(args: argparse.Namespace) -> ApplySettings:
    return ApplySettings(shutdown_timeout=args.shutdown_timeout, workers=max(args.parallel, 1))


def _hooks(out: Printer, applying: str) -> Hooks:
    """Print each host's plan as it is made (then ``applying``), and each action's result."""

    def show_plan(host: HostPlan) -> None:
        render_host_text(out, host)
        if not host.blocked and host.actions:
            out.print(applying)

    return Hooks(on_plan=show_plan, on_result=lambda result: render_result(out, result))


def _apply_saved(args: argparse.Namespace) -> int:
    from pathlib import Path

    from reconciler.offline.savedplan import apply_saved, load_plan

    out = Printer(sys.stdout)
    outcome = apply_saved(
        load_plan(Path(args.plan)),
        connector(),
        _settings(args),
        _hooks(out, "  [dim]applying the saved plan…[/dim]"),
    )
    return _verdict(out, outcome)


def _verdict(out: Printer, outcome: Outcome) -> int:
    done = sum(1 for rs in outcome.results.values() for r in rs if r.ok)
    failed = sum(1 for rs in outcome.results.values() for r in rs if not r.ok)
    refused = [name for name, host in outcome.plan.hosts.items() if host.refused]
    out.print()
    if outcome.failed:
        out.print(f"[bold][red]Apply failed[/red]: {done} action(s) done, {failed} failed.[/bold]")
        return EXIT_ERROR
    if refused:
        out.print(
            f"[bold][red]Refused by the overcommit policy on {escape(', '.join(refused))}[/red]: nothing was "
            f"applied there; {done} action(s) done on other hosts.[/bold]"
        )
        return EXIT_REFUSED
    if not outcome.plan.has_changes:
        out.print(f"[bold]{escape(summary_line(outcome.plan))}[/bold]")
        return EXIT_OK
    out.print(f"[bold][green]Apply complete[/green]: {done} action(s) done.[/bold]")
    return EXIT_OK
