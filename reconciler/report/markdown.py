"""The plan as a pull-request comment in GitHub-flavoured markdown (pure).

A marker line lets a CI job find and update its own earlier comment instead of adding another.
Every value from a manifest or from libvirt goes through ``escaping``: text with ``md_text``, a
name or URI with ``md_code``, the full text plan in ``md_fence``, so that no value can add or close a
table, heading, link, HTML element or the collapsible "Full plan" block.
"""

from __future__ import annotations

import io

from reconciler.engine.actions import Action, ActionKind
from reconciler.engine.plan import HostPlan, Plan
from reconciler.report.escaping import md_code, md_fence, md_text
from reconciler.report.printer import Printer
from reconciler.report.summary import action_mark, define_lines, show_value, summary_line, volume_line
from reconciler.report.text import render_text

MARKDOWN_MARKER = "<!-- virt-reconcile-plan -->"
_OK, _FAIL, _WARN = "✅", "❌", "⚠️"


def _markdown_changes(action: Action) -> str:
    if action.kind is ActionKind.DEFINE or action.moves_in:
        lines = define_lines(action) + ([f"({action.reason})"] if action.moves_in else [])
        return "<br>".join(md_text(line) for line in lines)
    if action.kind in (ActionKind.START, ActionKind.STOP) and len(action.changes) == 1:
        return ""
    if action.kind is ActionKind.RESTART:
        return md_text(action.reason)  # what waited for it
    if action.volume is not None:
        return md_text(volume_line(action))
    parts = [f"{c.field}: {show_value(c.before)} → {show_value(c.after)}" for c in action.changes]
    if action.reason:
        parts.append(f"({action.reason})")
    return "<br>".join(md_text(part) for part in parts)


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
        f"**Overcommit policy** ({md_text(report.enforcement)}): {verdict}",
        "",
        "| rule | before | after | limit | |",
        "|---|---:|---:|---|---|",
    ]
    for rule in report.rules:
        mark = _OK if rule.ok else (_FAIL if rule.raised else _WARN)
        before, after = md_text(rule.show(rule.before)), md_text(rule.show(rule.after))
        lines.append(f"| {md_text(rule.rule)} | {before} | {after} | {md_text(rule.arithmetic)} | {mark} |")
    lines.append("")
    lines += [f"> {_WARN} {md_text(note)}" for note in report.unchecked]
    lines += [f"> {_FAIL} {md_text(rule.message())}" for rule in report.violations if report.refused]
    lines += [f"> {_WARN} {md_text(rule.message())}" for rule in report.violations if not report.refused]
    return lines


def render_markdown(plan: Plan) -> str:
    """The plan as a pull-request comment: summary, a section per host, collapsible full detail."""
    lines = [MARKDOWN_MARKER, f"## virt-reconcile plan: {_headline(plan)}", "", summary_line(plan)]
    if plan.revision:
        lines += ["", f"Revision {md_code(plan.revision[:12])}."]
    for host in plan.hosts.values():
        lines += _host_section(host)
    detail = io.StringIO()
    render_text(plan, Printer(detail, color=False))
    lines += [
        "",
        "<details><summary>Full plan</summary>",
        "",
        *md_fence(detail.getvalue().rstrip()),
        "",
        "</details>",
        "",
    ]
    return "\n".join(lines)


def _headline(plan: Plan) -> str:
    """The verdict a reviewer reads first: errors, a refusal, changes, or none."""
    refused = [name for name, host in plan.hosts.items() if host.refused]
    if plan.has_errors:
        return f"{_FAIL} Plan has errors: nothing will be applied on the affected hosts"
    if refused:
        return f"{_FAIL} Refused by the overcommit policy on {', '.join(md_text(name) for name in refused)}"
    if plan.has_changes:
        return f"{_WARN} Changes to apply"
    return f"{_OK} No changes"


def _host_section(host: HostPlan) -> list[str]:
    """One host: its actions as a table, the policy table, then what the plan will not touch."""
    lines = ["", f"### {md_text(host.host)} — {md_code(host.uri)}", ""]
    if host.actions:
        lines += ["| | action | domain | changes | restart |", "|---|---|---|---|---|"]
        for action in host.actions:
            restart = (
                f"{_WARN} needed" if action.restart else ("now" if action.kind is ActionKind.RESTART else "")
            )
            symbol, name = action_mark(action)
            lines.append(
                f"| `{symbol}` | {name} | {md_code(action.domain, in_table=True)} | "
                f"{_markdown_changes(action)} | {restart} |"
            )
        lines.append("")
    else:
        lines += ["No changes.", ""]
    lines += _markdown_policy(host)
    while lines[-1] == "":
        lines.pop()
    return lines + _untouched(host)


def _untouched(host: HostPlan) -> list[str]:
    """Restarts still pending, orphans kept, conflicts and errors, each with why nothing is done to it."""
    lines: list[str] = []
    for name in host.pending_restarts:
        waits = md_text(host.restart_waits.get(name, ""))
        lines += [
            "",
            f"{_WARN} **Pending restart** {md_code(name)}: {waits} (takes effect at its next restart: "
            "`apply --restart-pending`)",
        ]
    kept = [o for o in host.orphans if not o.delete]
    if kept:
        lines += ["", "**Orphans** (managed, no longer in git; kept):"]
        lines += [f"- {md_code(o.domain)}: {md_text(o.reason)}" for o in kept]
    for held in host.held:
        lines += ["", f"{_FAIL} **Held** {md_code(held.domain)}: {md_text(held.reason)}"]
    for warning in host.warnings:
        lines += ["", f"{_WARN} **Warning**: {md_text(warning)}"]
    for conflict in host.conflicts:
        reason = md_text(conflict.reason)
        lines += ["", f"{_FAIL} **Conflict** {md_code(conflict.domain)}: {reason}; never overwritten"]
    for error in host.errors:
        lines += ["", f"{_FAIL} **Error**: {md_text(error)}"]
    lines += _paused(host)
    if host.blocked and not host.paused_because:
        lines += ["", f"**Nothing will be applied on {md_text(host.host)}.**"]
    return lines


def _paused(host: HostPlan) -> list[str]:
    """What is left alone on purpose: suspended domains (or the whole host), and a deferral."""
    if host.host_suspended:
        lines = ["", f"⏸ **Suspended**: {md_text(host.paused_because)}; nothing is done on this host"]
    else:
        lines = []
        for name in host.suspended:
            lines += ["", f"⏸ **Suspended** {md_code(name)}: left alone"]
    if host.deferred:
        later = "; nothing is applied until then" if host.actions else ""
        lines += ["", f"⏸ **Deferred**: {md_text(host.deferred)}{later}"]
    return lines
