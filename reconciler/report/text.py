"""Plans and apply results for people: text, in colour only on a terminal (pure but for the
stream it is given)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reconciler.engine.actions import Action, ActionKind
from reconciler.report.escaping import escape_markup
from reconciler.report.summary import action_mark, define_lines, show_value, summary_line, volume_line

if TYPE_CHECKING:
    from reconciler.engine.apply import ActionResult
    from reconciler.engine.plan import HostPlan, Plan
    from reconciler.engine.policy import PolicyReport
    from reconciler.report.printer import Printer

_STYLE = {
    ActionKind.DEFINE: "green",
    ActionKind.UPDATE: "yellow",
    ActionKind.BALLOON: "yellow",
    ActionKind.START: "cyan",
    ActionKind.STOP: "magenta",
    ActionKind.UNDEFINE: "red",
    ActionKind.MOVE: "blue",
    ActionKind.RESTART: "cyan",
    ActionKind.POOL: "green",
    ActionKind.CREATE_VOLUME: "green",
    ActionKind.RESIZE_VOLUME: "yellow",
    ActionKind.DELETE_VOLUME: "red",
    ActionKind.RESEED: "yellow",
}


def action_title(action: Action) -> str:
    """``+ define web-01 (note)`` with markup for the action's colour."""
    symbol, name = action_mark(action)
    style = "green" if symbol == "+" else _STYLE[action.kind]
    notes = []
    if action.restart:
        notes.append("restart needed")
    if action.reason and action.kind in (
        ActionKind.UNDEFINE,
        ActionKind.BALLOON,
        ActionKind.MOVE,
        ActionKind.RESTART,
        ActionKind.POOL,
    ):
        notes.append(action.reason)
    if action.stop_first:
        notes.append("running: stopped first")
    suffix = f"  [dim]({escape_markup('; '.join(notes))})[/dim]" if notes else ""
    head = f"[{style}]{symbol} {name}[/{style}]"
    return f"{head} [bold]{escape_markup(action.domain)}[/bold]{suffix}"


def render_host_text(console: Printer, host: HostPlan, *, blank_after: bool = False) -> None:
    """One host's plan: actions with their field changes, then orphans, conflicts and errors."""
    console.print(f"[bold]{escape_markup(host.host)}[/bold]  [dim]{escape_markup(host.uri)}[/dim]")
    for action in host.actions:
        _print_action(console, action)
    _print_untouched(console, host)
    if host.policy is not None:
        _print_policy(console, host.policy)
    _print_paused(console, host)
    if host.blocked and not host.paused_because:
        console.print(f"  [red]nothing will be applied on {escape_markup(host.host)}[/red]")
    elif not (host.actions or host.blocked):
        console.print("  [dim]no changes[/dim]")
    if blank_after:
        console.print()


def _print_action(console: Printer, action: Action) -> None:
    """An action's title, then its field changes (a new domain's spec in a few lines)."""
    console.print("  " + action_title(action))
    if action.kind is ActionKind.START and len(action.changes) == 1:
        return
    if action.kind is ActionKind.DEFINE or action.moves_in:
        for line in define_lines(action):
            console.print(f"      {escape_markup(line)}")
        return
    if action.volume is not None:
        console.print(f"      {escape_markup(volume_line(action))}")
        return
    for change in action.changes:
        before, after = escape_markup(show_value(change.before)), escape_markup(show_value(change.after))
        console.print(f"      {escape_markup(change.field)}: {before} → {after}")


def _print_paused(console: Printer, host: HostPlan) -> None:
    """What is left alone on purpose: suspended domains (or the whole host), and a deferral."""
    if host.host_suspended:
        count = len(host.suspended)
        reason = escape_markup(host.paused_because)
        console.print(f"  [yellow]⏸ suspended[/yellow]: {reason}; its {count} domain(s) are left alone")
    else:
        for name in host.suspended:
            console.print(f"  [yellow]⏸ suspended[/yellow] [bold]{escape_markup(name)}[/bold]: left alone")
    if host.deferred:
        later = "; nothing is applied until then" if host.actions else ""
        console.print(f"  [yellow]⏸ deferred[/yellow]: {escape_markup(host.deferred)}{later}")


def _print_untouched(console: Printer, host: HostPlan) -> None:
    """What the plan will not touch, and why: restarts still pending, orphans kept, held domains,
    conflicts, errors, and the pre-flight's warnings."""
    for name in host.pending_restarts:
        waits = escape_markup(host.restart_waits.get(name, ""))
        console.print(
            f"  [cyan]{ActionKind.RESTART.symbol} pending restart[/cyan] [bold]{escape_markup(name)}[/bold]: "
            f"{waits} [dim](takes effect at its next restart: apply --restart-pending)[/dim]"
        )
    for orphan in host.orphans:
        if not orphan.delete:
            name, reason = escape_markup(orphan.domain), escape_markup(orphan.reason)
            kept = f"managed but no longer in git; kept: {reason}"
            console.print(f"  [yellow]! orphan[/yellow] [bold]{name}[/bold]: {kept}")
    for held in host.held:
        name, reason = escape_markup(held.domain), escape_markup(held.reason)
        console.print(f"  [red]✗ held[/red] [bold]{name}[/bold]: {reason}")
    for warning in host.warnings:
        console.print(f"  [yellow]! warning[/yellow]: {escape_markup(warning)}")
    for conflict in host.conflicts:
        name, reason = escape_markup(conflict.domain), escape_markup(conflict.reason)
        console.print(f"  [red]✗ conflict[/red] [bold]{name}[/bold]: {reason}; never overwritten")
    for error in host.errors:
        console.print(f"  [red]✗ error[/red]: {escape_markup(error)}")


def _print_policy(console: Printer, report: PolicyReport) -> None:
    """Every rule's usage in one line, then each violation: a refusal, or a warning under ``warn``."""
    console.print(f"  [dim]policy:[/dim] {policy_line(report)}")
    for note in report.unchecked:
        console.print(f"  [dim]policy: {escape_markup(note)}[/dim]")
    for rule in report.violations:
        if report.refused:
            console.print(f"  [red]✗ refused by policy[/red]: {escape_markup(rule.message())}")
        else:
            label = "[yellow]! policy warning (enforcement: warn)[/yellow]"
            console.print(f"  {label}: {escape_markup(rule.message())}")


def policy_line(report: PolicyReport) -> str:
    """Each rule's usage against its limit in one line: ``cpu.total 9→11/10 ✗  memory.commit 4GiB/15GiB``.

    A red mark is a rule this plan breaks; a yellow one a rule already broken that the plan does
    not make worse. ``storage.free`` reads ``23GiB in use/252GiB``: what libvirt reports in use
    where the pool lives (a dir pool's whole filesystem, not only its volumes) against its size.
    """
    parts = []
    for rule in report.rules:
        used = (
            rule.show(rule.after)
            if rule.before == rule.after
            else f"{rule.show(rule.before)}→{rule.show(rule.after)}"
        )
        used += " in use" if rule.rule.startswith("storage.free[") else ""
        mark = "" if rule.ok else (" [red]✗[/red]" if rule.raised else " [yellow]✗[/yellow]")
        parts.append(
            f"{escape_markup(rule.rule)} {escape_markup(used)}/{escape_markup(rule.show(rule.limit))}{mark}"
        )
    return "  ".join(parts)


def render_text(plan: Plan, console: Printer) -> None:
    """The whole plan for people."""
    for host in plan.hosts.values():
        render_host_text(console, host, blank_after=True)
    console.print(f"[bold]{escape_markup(summary_line(plan))}[/bold]")


def render_result(console: Printer, result: ActionResult) -> None:
    """One applied action, as it finishes."""
    title = action_title(result.action)
    if result.ok:
        console.print(f"  {title}: {escape_markup(result.detail)} [dim]({result.seconds:.2f}s)[/dim]")
    else:
        console.print(f"  {title}: [red]failed: {escape_markup(result.detail)}[/red]")
