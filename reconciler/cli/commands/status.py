"""``status``: a running daemon's ``/status``, for people."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from typing import Any

from reconciler.cli.exit_codes import EXIT_OK
from reconciler.errors import StatusError
from reconciler.report import Printer
from reconciler.report import escape_markup as escape

COLORS: dict[str | None, str] = {"applied": "green", "unchanged": "green", "refused": "red", "error": "red"}


def run(args: argparse.Namespace) -> int:
    """Print the source's problem, if any, then a line per host."""
    url = args.url.rstrip("/") + "/status"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            document = json.load(response)
    except (OSError, ValueError) as err:
        raise StatusError(f"cannot read {url}: {err}") from err
    out = Printer(sys.stdout)
    source = document.get("source", {})
    if source.get("message"):
        out.print(f"[red]source[/red]: {escape(source['message'])}")
    for name, host in document.get("hosts", {}).items():
        _print_host(out, name, host)
    return EXIT_OK


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
