"""Plans and apply results for people: text, in colour only on a terminal (pure but for the
stream it is given)."""

from __future__ import annotations

import os
import re
from typing import IO

from rich.console import Console
from rich.markup import escape

from reconciler.engine.actions import Action, ActionKind
from reconciler.engine.apply import ActionResult
from reconciler.engine.plan import HostPlan, Plan
from reconciler.engine.policy import PolicyReport
from reconciler.report.summary import define_lines, show_value, summary_line

_STYLE = {
    ActionKind.DEFINE: "green",
    ActionKind.UPDATE: "yellow",
    ActionKind.BALLOON: "yellow",
    ActionKind.START: "cyan",
    ActionKind.STOP: "magenta",
    ActionKind.UNDEFINE: "red",
    ActionKind.MOVE: "blue",
}


_MARKUP_TAG = re.compile(r"(?<!\\)\[/?[a-z]+(?: [a-z]+)*\]")


def plain(markup: str) -> str:
    """Rich markup without its style tags, as printed where there is no colour."""
    return _MARKUP_TAG.sub("", markup).replace("\\[", "[")


def wants_color(file: IO[str]) -> bool:
    """Colour only on a terminal; NO_COLOR turns it off and FORCE_COLOR on (https://no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    isatty = getattr(file, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"


class Printer:
    """Prints lines written in rich markup: through rich in colour, or as plain text.

    Plain text is written directly: a plan for thousands of domains prints in milliseconds, where
    rendering every line through rich costs about half a millisecond each.
    """

    def __init__(self, file: IO[str], *, color: bool | None = None) -> None:
        self.file = file
        use_color = wants_color(file) if color is None else color
        self._console = (
            Console(file=file, highlight=False, soft_wrap=True, emoji=False, force_terminal=True)
            if use_color
            else None
        )

    def print(self, markup: str = "") -> None:
        """Print one line (or several, separated by newlines)."""
        if self._console is not None:
            self._console.print(markup)
        else:
            self.file.write(plain(markup) + "\n")


def action_title(action: Action) -> str:
    """``+ define web-01 (note)`` with markup for the action's colour."""
    style = _STYLE[action.kind]
    notes = []
    if action.restart:
        notes.append("restart needed")
    if action.reason and action.kind in (ActionKind.UNDEFINE, ActionKind.BALLOON, ActionKind.MOVE):
        notes.append(action.reason)
    if action.stop_first:
        notes.append("running: stopped first")
    suffix = f"  [dim]({escape('; '.join(notes))})[/dim]" if notes else ""
    head = f"[{style}]{action.kind.symbol} {action.kind.value}[/{style}]"
    return f"{head} [bold]{escape(action.domain)}[/bold]{suffix}"


def render_host_text(console: Printer, host: HostPlan, *, blank_after: bool = False) -> None:
    """One host's plan: actions with their field changes, then orphans, conflicts and errors."""
    console.print(f"[bold]{escape(host.host)}[/bold]  [dim]{escape(host.uri)}[/dim]")
    for action in host.actions:
        _print_action(console, action)
    _print_untouched(console, host)
    if host.policy is not None:
        _print_policy(console, host.policy)
    if host.blocked:
        console.print(f"  [red]nothing will be applied on {escape(host.host)}[/red]")
    elif not host.actions:
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
            console.print(f"      {escape(line)}")
        return
    for change in action.changes:
        before, after = escape(show_value(change.before)), escape(show_value(change.after))
        console.print(f"      {escape(change.field)}: {before} → {after}")


def _print_untouched(console: Printer, host: HostPlan) -> None:
    """What the plan will not touch, and why: orphans kept, held domains, conflicts, errors, and
    the pre-flight's warnings."""
    for orphan in host.orphans:
        if not orphan.delete:
            console.print(
                f"  [yellow]! orphan[/yellow] [bold]{escape(orphan.domain)}[/bold]: managed but no longer in "
                f"git; kept: {escape(orphan.reason)}"
            )
    for held in host.held:
        console.print(f"  [red]✗ held[/red] [bold]{escape(held.domain)}[/bold]: {escape(held.reason)}")
    for warning in host.warnings:
        console.print(f"  [yellow]! warning[/yellow]: {escape(warning)}")
    for conflict in host.conflicts:
        console.print(
            f"  [red]✗ conflict[/red] [bold]{escape(conflict.domain)}[/bold]: {escape(conflict.reason)}; "
            "never overwritten"
        )
    for error in host.errors:
        console.print(f"  [red]✗ error[/red]: {escape(error)}")


def _print_policy(console: Printer, report: PolicyReport) -> None:
    """Every rule's usage in one line, then each violation: a refusal, or a warning under ``warn``."""
    console.print(f"  [dim]policy:[/dim] {policy_line(report)}")
    for rule in report.violations:
        if report.refused:
            console.print(f"  [red]✗ refused by policy[/red]: {escape(rule.message())}")
        else:
            label = "[yellow]! policy warning (enforcement: warn)[/yellow]"
            console.print(f"  {label}: {escape(rule.message())}")


def policy_line(report: PolicyReport) -> str:
    """Each rule's usage against its limit in one line: ``cpu.total 9→11/10 ✗  memory.commit 4GiB/15GiB``.

    A red mark is a rule this plan breaks; a yellow one a rule already broken that the plan does
    not make worse.
    """
    parts = []
    for rule in report.rules:
        used = (
            rule.show(rule.after)
            if rule.before == rule.after
            else f"{rule.show(rule.before)}→{rule.show(rule.after)}"
        )
        mark = "" if rule.ok else (" [red]✗[/red]" if rule.raised else " [yellow]✗[/yellow]")
        parts.append(f"{rule.rule} {escape(used)}/{escape(rule.show(rule.limit))}{mark}")
    return "  ".join(parts)


def render_text(plan: Plan, console: Printer) -> None:
    """The whole plan for people."""
    for host in plan.hosts.values():
        render_host_text(console, host, blank_after=True)
    console.print(f"[bold]{escape(summary_line(plan))}[/bold]")


def render_result(console: Printer, result: ActionResult) -> None:
    """One applied action, as it finishes."""
    title = action_title(result.action)
    if result.ok:
        console.print(f"  {title}: {escape(result.detail)} [dim]({result.seconds:.2f}s)[/dim]")
    else:
        console.print(f"  {title}: [red]failed: {escape(result.detail)}[/red]")
