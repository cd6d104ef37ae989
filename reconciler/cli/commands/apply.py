"""``apply``: plan, then change the hosts to match; or apply exactly a saved plan (``--plan FILE``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from reconciler.cli.exit_codes import EXIT_ERROR, EXIT_OK, EXIT_REFUSED
from reconciler.cli.inputs import ask_git, connector, early_opens, load, reconcile_options, selector
from reconciler.engine.actions import Action, ActionKind
from reconciler.engine.apply import ApplySettings, Hooks
from reconciler.engine.plan import HostPlan
from reconciler.engine.reconcile import Connector, Outcome, reconcile, select_hosts
from reconciler.files.content_cache import ContentCache
from reconciler.report import Printer, render_host_text, render_result, summary_line
from reconciler.report import escape_markup as escape

if TYPE_CHECKING:
    from reconciler.adapters.gitfacts import GitFacts
    from reconciler.spec.manifests import ManifestSet


def run(args: argparse.Namespace) -> int:
    """Exit 0 done or nothing to do, 3 refused by policy (on any host), 1 an action or host failed."""
    if args.plan:
        return _apply_saved(args)
    git = ask_git(args.path)  # answers while the manifests load
    out = Printer(sys.stdout)
    with early_opens(args) as early:  # the hosts open while the manifests load
        manifests = load(args.path, args, early)
        outcome = _reconcile(args, manifests, connector(early), git, out)
    return _verdict(out, outcome)


def _reconcile(
    args: argparse.Namespace, manifests: ManifestSet, connect: Connector, git: GitFacts, out: Printer
) -> Outcome:
    """Plan the selected hosts, ask when asked to, and apply, printing as it goes."""
    select_hosts(manifests, args.host, selector(args))
    hooks = replace(_hooks(out), confirm=None if args.auto_approve else ask_on_terminal(out))
    return reconcile(
        manifests,
        connect,
        reconcile_options(
            args,
            manifests,
            git,
            apply=True,
            settings=_settings(args),
            restart_pending=args.restart_pending,
        ),
        hooks,
        parse_cache=ContentCache.default("domains"),
    )


def ask_on_terminal(out: Printer) -> Callable[[Sequence[Action]], bool] | None:
    """The question asked before undefining or moving domains or deleting volumes, when a person
    is at a terminal."""
    if not sys.stdin.isatty():  # a person can answer (stdout may be piped, e.g. into tee)
        return None

    def confirm(leaving: Sequence[Action]) -> bool:
        undefines = [a for a in leaving if a.kind is ActionKind.UNDEFINE]
        moves = [a for a in leaving if a.kind is ActionKind.MOVE]
        deletions = [a for a in leaving if a.kind is ActionKind.DELETE_VOLUME]
        out.print()
        for action in leaving:
            out.print(f"  [red]{action.kind.symbol} {action.kind.value}[/red] {escape(_asked_about(action))}")
        deleted = f" and delete {len(deletions)} volume(s)" if deletions else ""
        question = (
            f"Undefine {len(undefines)} and move {len(moves)} domain(s){deleted}? Only 'yes' goes ahead: "
        )
        try:
            return input(question).strip().lower() == "yes"
        except EOFError:
            return False

    return confirm


def _asked_about(action: Action) -> str:
    """What the question lists for one action: the domain and its host(s), or the volume deleted."""
    if action.volume is not None:
        return f"{action.volume.pool}/{action.volume.name} ({action.host}, with {action.domain})"
    where = f"{action.host} → {action.peer}" if action.peer else action.host
    return f"{action.domain} ({where})"


def _settings(args: argparse.Namespace) -> ApplySettings:
    return ApplySettings(
        shutdown_timeout=args.shutdown_timeout,
        workers=max(args.parallel, 1),
        max_unavailable=args.max_unavailable,
    )


def _hooks(out: Printer) -> Hooks:
    """Print each host's plan (every host is planned before any is changed), and each result."""

    def show_plan(host: HostPlan) -> None:
        render_host_text(out, host, blank_after=True)

    return Hooks(on_plan=show_plan, on_result=lambda result: render_result(out, result))


def _apply_saved(args: argparse.Namespace) -> int:
    """``apply --plan FILE``: exactly the saved plan's actions, its hosts worked side by side
    (``--host-parallel``), once every host is re-observed and re-checked."""
    from pathlib import Path

    from reconciler.files.keys import verifying_key
    from reconciler.offline.savedplan import apply_saved, load_plan, with_seed_images
    from reconciler.spec.manifests import DomainKey

    out = Printer(sys.stdout)
    saved = load_plan(Path(args.plan), verifying_key)  # refused unless this machine's key signed it
    if any(action.seed is not None for host in saved.hosts.values() for action in host.actions):
        manifests = load(args.path, args)  # a seed is saved by digest: its image is built from the files
        saved = with_seed_images(saved, lambda host, domain: manifests.seeds.get(DomainKey(host, domain)))
    outcome = apply_saved(
        saved,
        connector(),
        _settings(args),
        replace(_hooks(out), confirm=None if args.auto_approve else ask_on_terminal(out)),
        host_parallel=args.host_parallel,  # hosts opened, checked and applied side by side
    )
    return _verdict(out, outcome)


def _verdict(out: Printer, outcome: Outcome) -> int:
    done = sum(1 for rs in outcome.results.values() for r in rs if r.ok)
    failed = sum(1 for rs in outcome.results.values() for r in rs if not r.ok)
    refused = outcome.refused_hosts  # at plan time, or during the apply once its new pools ran
    if done or failed:
        out.print()  # each plan ends with a blank line already; the results do not
    if outcome.cancelled:
        out.print("[bold][red]Not applied[/red]: undefines, moves and deletions were not approved.[/bold]")
        return EXIT_ERROR
    if outcome.failed:
        troubled = [
            name for name, host in outcome.plan.hosts.items() if host.errors or host.conflicts or host.held
        ]
        troubled += [name for name in outcome.host_errors if name not in troubled]
        where = f"; errors or held domains on {escape(', '.join(troubled))} (above)" if troubled else ""
        out.print(f"[bold][red]Apply failed[/red]: {done} action(s) done, {failed} failed{where}.[/bold]")
        return EXIT_ERROR
    if refused:
        out.print(
            f"[bold][red]Refused by the overcommit policy on {escape(', '.join(refused))}[/red]: nothing was "
            f"applied there but the pools it had to make to be judged; {done} action(s) done.[/bold]"
        )
        return EXIT_REFUSED
    if not outcome.plan.has_changes:
        out.print(f"[bold]{escape(summary_line(outcome.plan))}[/bold]")
        return EXIT_OK
    deferred = [name for name, host in outcome.plan.hosts.items() if host.deferred and host.actions]
    later = f"; deferred by their sync windows on {escape(', '.join(deferred))}" if deferred else ""
    out.print(f"[bold][green]Apply complete[/green]: {done} action(s) done{later}.[/bold]")
    return EXIT_OK
