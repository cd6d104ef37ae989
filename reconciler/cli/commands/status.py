"""``status``: a running daemon's ``/status``, for people; exits 1 when a host needs attention.

Per host: its result, then every domain that is not ``synced`` (orphans, pending restarts, refusals,
errors, suspended ones, changes waiting) with why; then the passes running now and what the last
passes did. The exit code is 0 when every host is applied, unchanged, deferred by its sync windows,
suspended (or not reported yet), and 1 when any is refused or in error, when the source cannot be
fetched, or when the revision last taken up could not be applied (its manifests invalid: with no
host known yet, that is the only sign): a script or a monitoring check can act on it.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from typing import Any

from reconciler.cli.exit_codes import EXIT_ERROR, EXIT_OK
from reconciler.errors import StatusError
from reconciler.report import Printer
from reconciler.report import escape_markup as escape

COLORS: dict[str | None, str] = {"applied": "green", "unchanged": "green", "refused": "red", "error": "red"}
COLORS |= {"deferred": "yellow", "suspended": "dim"}
#: Each sync state that needs a line, its mark and colour (``synced`` needs none).
MARKS = {
    "error": ("✗", "red"),
    "refused": ("✗", "red"),
    "orphan": ("!", "yellow"),
    "pendingRestart": ("↻", "yellow"),
    "outOfSync": ("~", "yellow"),
    "suspended": ("‖", "dim"),
}
BAD_RESULTS = ("refused", "error")
HISTORY_LINES = 5  # the last passes shown


def run(args: argparse.Namespace) -> int:
    """Print the source's problem, each host with its domains needing attention, the passes in
    progress and the last passes; exit 1 when a host is refused or in error, the source fails, or
    the revision could not be applied."""
    document = fetch(args.url)
    out = Printer(sys.stdout)
    source = document.get("source", {})
    if source.get("message"):
        out.print(f"[red]source[/red]: {escape(source['message'])}")
    if document.get("revisionError"):
        out.print(f"[red]revision[/red]: {escape(document['revisionError'])}")
    hosts = document.get("hosts", {})
    for name, host in hosts.items():
        _print_host(out, name, host)
    _print_in_progress(out, document.get("inProgress", []))
    _print_history(out, document.get("history", [])[:HISTORY_LINES])
    failing = (
        source.get("message")
        or document.get("revisionError")
        or any(host.get("result") in BAD_RESULTS for host in hosts.values())
    )
    return EXIT_ERROR if failing else EXIT_OK


def fetch(url: str) -> dict[str, Any]:
    """The daemon's ``/status`` document at ``url``; a ``StatusError`` when it cannot be read."""
    address = url.rstrip("/") + "/status"
    try:
        with urllib.request.urlopen(address, timeout=10) as response:
            document = json.load(response)
    except (OSError, ValueError) as err:
        raise StatusError(f"cannot read {address}: {err}") from err
    if not isinstance(document, dict):
        raise StatusError(f"cannot read {address}: not a status document")
    return document


def _print_host(out: Printer, name: str, host: dict[str, Any]) -> None:
    color = COLORS.get(host.get("result"), "yellow")
    applied = (host.get("appliedRevision") or "")[:12] or "never"
    out.print(
        f"[bold]{escape(name)}[/bold]  [{color}]{escape(host.get('result', '?'))}[/{color}]  "
        f"revision {escape((host.get('revision') or '')[:12])}  applied {escape(applied)}  "
        f"[dim]{escape(host.get('time', ''))}[/dim]"
    )
    if host.get("message"):
        out.print(f"  {escape(host['message'])}")
    if host.get("suspended"):
        out.print("  [dim]‖ suspended: every domain is left alone[/dim]")
    if host.get("deferred"):
        out.print(f"  [yellow]changes wait[/yellow]: {escape(host['deferred'])}")
    for domain, state in sorted(host.get("domains", {}).items()):
        sync = state.get("sync", "")
        if sync not in MARKS:
            continue
        mark, tint = MARKS[sync]
        health = escape(state.get("health", ""))
        why = f": {escape(state['message'])}" if state.get("message") else ""
        out.print(f"  [{tint}]{mark} {escape(domain)} {escape(sync)}[/{tint}] [dim]({health})[/dim]{why}")


def _print_in_progress(out: Printer, running: list[dict[str, Any]]) -> None:
    for item in running:
        out.print(
            f"[cyan]in progress[/cyan]: {escape(', '.join(item.get('hosts', [])))} at "
            f"{escape((item.get('revision') or '')[:12])} ({escape(item.get('trigger', ''))}) "
            f"since {escape(item.get('started', ''))}"
        )


def _print_history(out: Printer, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    out.print("last passes:")
    for entry in history:
        color = COLORS.get(entry.get("result"), "yellow")
        hosts = ", ".join(entry.get("hosts", [])) or "every host"
        did = ", ".join(entry.get("actions", [])) or entry.get("message", "")
        count = entry.get("count", 1)
        repeated = f" ×{count} since {entry.get('first', '')}" if isinstance(count, int) and count > 1 else ""
        out.print(
            f"  [dim]{escape(entry.get('time', ''))}[/dim]  {escape(hosts)}  "
            f"[{color}]{escape(entry.get('result', '?'))}[/{color}]{escape(repeated)}  "
            f"{escape((entry.get('revision') or '')[:12])} ({escape(entry.get('trigger', ''))}, "
            f"{float(entry.get('duration', 0)):.1f}s): {escape(did)}"
        )
