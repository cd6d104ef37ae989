"""Plans and apply results for people (text, colour only on a terminal) and for machines (JSON).

The JSON document is a stable contract: ``formatVersion``, a ``summary``, per host its orphans,
conflicts and errors, and a flat ``actions`` list where every action has ``action``, ``host``,
``domain``, ``changes`` (``{field, before, after}``) and ``restart``.
"""

from __future__ import annotations

import io
import json
import os
import re
from typing import IO, Any

from rich.console import Console
from rich.markup import escape

from reconciler.engine.apply import ActionResult
from reconciler.engine.plan import Action, ActionKind, HostPlan, Plan
from reconciler.engine.policy import PolicyReport

FORMAT_VERSION = 1
_STYLE = {
    ActionKind.DEFINE: "green",
    ActionKind.UPDATE: "yellow",
    ActionKind.BALLOON: "yellow",
    ActionKind.START: "cyan",
    ActionKind.STOP: "magenta",
    ActionKind.UNDEFINE: "red",
}
_ORDER = [
    ActionKind.DEFINE,
    ActionKind.UPDATE,
    ActionKind.BALLOON,
    ActionKind.START,
    ActionKind.STOP,
    ActionKind.UNDEFINE,
]


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


def _value(value: Any) -> str:
    """A field value as a manifest author would write it (true, null, 4GiB)."""
    return value if isinstance(value, str) and value else json.dumps(value)


def action_title(action: Action) -> str:
    """``+ define web-01 (note)`` with markup for the action's colour."""
    style = _STYLE[action.kind]
    notes = []
    if action.restart:
        notes.append("restart needed")
    if action.reason and action.kind in (ActionKind.UNDEFINE, ActionKind.BALLOON):
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
        console.print("  " + action_title(action))
        if action.kind is ActionKind.START and len(action.changes) == 1:
            continue
        if action.kind is ActionKind.DEFINE:
            for line in _define_lines(action):
                console.print(f"      {escape(line)}")
            continue
        for change in action.changes:
            before, after = escape(_value(change.before)), escape(_value(change.after))
            console.print(f"      {escape(change.field)}: {before} → {after}")
    for orphan in host.orphans:
        if not orphan.delete:
            console.print(
                f"  [yellow]! orphan[/yellow] [bold]{escape(orphan.domain)}[/bold]: managed but no longer in "
                "git; kept (--allow-delete or the host's prune: true removes it)"
            )
    for conflict in host.conflicts:
        console.print(
            f"  [red]✗ conflict[/red] [bold]{escape(conflict.domain)}[/bold]: {escape(conflict.reason)}; "
            "never overwritten"
        )
    for error in host.errors:
        console.print(f"  [red]✗ error[/red]: {escape(error)}")
    if host.policy is not None:
        console.print(f"  [dim]policy:[/dim] {policy_line(host.policy)}")
        for rule in host.policy.violations:
            if host.policy.refused:
                console.print(f"  [red]✗ refused by policy[/red]: {escape(rule.message())}")
            else:
                label = "[yellow]! policy warning (enforcement: warn)[/yellow]"
                console.print(f"  {label}: {escape(rule.message())}")
    if host.blocked:
        console.print(f"  [red]nothing will be applied on {escape(host.host)}[/red]")
    elif not host.actions:
        console.print("  [dim]no changes[/dim]")
    if blank_after:
        console.print()


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


def _define_lines(action: Action) -> list[str]:
    """A new domain's spec in a few lines: scalars on one, then one line per disk, NIC and boot."""
    scalars: list[str] = []
    groups: dict[str, list[str]] = {}
    for change in action.changes:
        if change.after is None:
            continue
        if "." in change.field:
            group, sub = change.field.rsplit(".", 1)
            groups.setdefault(group, []).append(f"{sub}={_value(change.after)}")
        else:
            scalars.append(f"{change.field}={_value(change.after)}")
    return [" ".join(scalars)] + [f"{group}: {' '.join(items)}" for group, items in groups.items()]


def summary(plan: Plan) -> dict[str, int]:
    """Counts per action kind, plus orphans kept, conflicts and errors."""
    counts = {kind.value: 0 for kind in _ORDER}
    for action in plan.actions:
        counts[action.kind.value] += 1
    hosts = plan.hosts.values()
    counts["orphansKept"] = sum(1 for h in hosts for o in h.orphans if not o.delete)
    counts["conflicts"] = sum(len(h.conflicts) for h in hosts)
    counts["errors"] = sum(len(h.errors) for h in hosts)
    counts["refusedHosts"] = sum(1 for h in hosts if h.refused)
    return counts


def summary_line(plan: Plan) -> str:
    """``Plan: 1 to define, ...`` or the all-clear."""
    counts = summary(plan)
    extras = [
        f"{counts[key]} {label}"
        for key, label in (
            ("orphansKept", "orphan(s) kept"),
            ("conflicts", "conflict(s)"),
            ("errors", "error(s)"),
            ("refusedHosts", "host(s) refused by the overcommit policy"),
        )
        if counts[key]
    ]
    if not plan.has_changes:
        head = "No changes: every host matches the manifests."
        return head + (f" {', '.join(extras)}." if extras else "")
    parts = ", ".join(f"{counts[kind.value]} to {kind.value}" for kind in _ORDER)
    return f"Plan: {parts}." + (f" {', '.join(extras)}." if extras else "")


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


def plan_document(plan: Plan) -> dict[str, Any]:
    """The plan as the stable JSON document."""
    return {
        "formatVersion": FORMAT_VERSION,
        "revision": plan.revision,
        "changes": plan.has_changes,
        "summary": summary(plan),
        "hosts": {
            name: {
                "uri": host.uri,
                "blocked": host.blocked,
                "orphans": [
                    {"domain": o.domain, "running": o.running, "delete": o.delete} for o in host.orphans
                ],
                "conflicts": [{"domain": c.domain, "reason": c.reason} for c in host.conflicts],
                "errors": list(host.errors),
                "refused": host.refused,
                "enforcement": host.policy.enforcement if host.policy else None,
                "violations": [rule.message() for rule in host.policy.violations] if host.policy else [],
                "policy": _policy_document(host.policy),
            }
            for name, host in plan.hosts.items()
        },
        "actions": [
            {
                "action": action.kind.value,
                "host": action.host,
                "domain": action.domain,
                "changes": [
                    {"field": change.field, "before": change.before, "after": change.after}
                    for change in action.changes
                ],
                "restart": action.restart,
                "reason": action.reason,
            }
            for action in plan.actions
        ],
    }


def _policy_document(report: PolicyReport | None) -> dict[str, Any]:
    """``rule -> {before, after, limit, ok, ...}``: how full the host is and will be."""
    if report is None:
        return {}
    return {
        rule.rule: {
            "before": rule.before,
            "after": rule.after,
            "peak": rule.peak,
            "limit": rule.limit,
            "ok": rule.ok,
            "raised": rule.raised,
            "unit": rule.unit,
            "arithmetic": rule.arithmetic,
        }
        for rule in report.rules
    }


def render_json(plan: Plan) -> str:
    """The plan as indented JSON text."""
    return json.dumps(plan_document(plan), indent=2, sort_keys=False) + "\n"


# -------------------------------------------------------------------------------------- markdown

MARKDOWN_MARKER = "<!-- virt-reconcile-plan -->"
_OK, _FAIL, _WARN = "✅", "❌", "⚠️"


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return "`" + text.replace("`", "'") + "`"


def _markdown_changes(action: Action) -> str:
    if action.kind is ActionKind.DEFINE:
        return "<br>".join(_cell(line) for line in _define_lines(action))
    if action.kind in (ActionKind.START, ActionKind.STOP) and len(action.changes) == 1:
        return ""
    parts = [f"{c.field}: {_value(c.before)} → {_value(c.after)}" for c in action.changes]
    if action.reason:
        parts.append(f"({action.reason})")
    return "<br>".join(_cell(part) for part in parts)


def _markdown_policy(host: HostPlan) -> list[str]:
    report = host.policy
    if report is None:
        return []
    verdict = (
        f"{_FAIL} **refused**"
        if report.refused
        else (f"{_WARN} over the limit (enforcement: warn)" if report.violations else f"{_OK} within limits")
    )
    lines = [
        f"**Overcommit policy** ({report.enforcement}): {verdict}",
        "",
        "| rule | before | after | limit | |",
        "|---|---:|---:|---|---|",
    ]
    for rule in report.rules:
        mark = _OK if rule.ok else (_FAIL if rule.raised else _WARN)
        lines.append(
            f"| {rule.rule} | {rule.show(rule.before)} | {rule.show(rule.after)} | "
            f"{_cell(rule.arithmetic)} | {mark} |"
        )
    lines.append("")
    lines += [f"> {_FAIL} {_cell(rule.message())}" for rule in report.violations if report.refused]
    lines += [f"> {_WARN} {_cell(rule.message())}" for rule in report.violations if not report.refused]
    return lines


def render_markdown(plan: Plan) -> str:
    """The plan as a pull-request comment: summary, a section per host, collapsible full detail."""
    refused = [name for name, host in plan.hosts.items() if host.refused]
    if plan.has_errors:
        headline = f"{_FAIL} Plan has errors: nothing will be applied on the affected hosts"
    elif refused:
        headline = f"{_FAIL} Refused by the overcommit policy on {', '.join(refused)}"
    elif plan.has_changes:
        headline = f"{_WARN} Changes to apply"
    else:
        headline = f"{_OK} No changes"
    lines = [MARKDOWN_MARKER, f"## virt-reconcile plan: {headline}", "", summary_line(plan)]
    if plan.revision:
        lines += ["", f"Revision {_code(plan.revision[:12])}."]
    for host in plan.hosts.values():
        lines += ["", f"### {host.host} — {_code(host.uri)}", ""]
        if host.actions:
            lines += ["| | action | domain | changes | restart |", "|---|---|---|---|---|"]
            for action in host.actions:
                restart = f"{_WARN} needed" if action.restart else ""
                lines.append(
                    f"| `{action.kind.symbol}` | {action.kind.value} | {_code(action.domain)} | "
                    f"{_markdown_changes(action)} | {restart} |"
                )
            lines.append("")
        else:
            lines += ["No changes.", ""]
        lines += _markdown_policy(host)
        while lines[-1] == "":
            lines.pop()
        kept = [o for o in host.orphans if not o.delete]
        if kept:
            names = ", ".join(_code(o.domain) for o in kept)
            note = "managed, no longer in git; kept until `--allow-delete` or `prune: true`"
            lines += ["", f"**Orphans** ({note}): {names}"]
        for conflict in host.conflicts:
            reason = _cell(conflict.reason)
            lines += ["", f"{_FAIL} **Conflict** {_code(conflict.domain)}: {reason}; never overwritten"]
        for error in host.errors:
            lines += ["", f"{_FAIL} **Error**: {_cell(error)}"]
        if host.blocked:
            lines += ["", f"**Nothing will be applied on {host.host}.**"]
    detail = io.StringIO()
    render_text(plan, Printer(detail, color=False))
    lines += [
        "",
        "<details><summary>Full plan</summary>",
        "",
        "```text",
        detail.getvalue().rstrip(),
        "```",
        "",
        "</details>",
        "",
    ]
    return "\n".join(lines)
