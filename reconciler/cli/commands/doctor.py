"""``doctor``: is this machine ready to be a hypervisor (kvm, /dev/kvm, libvirtd, KSM, swap)?"""

from __future__ import annotations

import argparse
import sys

from reconciler.cli.exit_codes import EXIT_ERROR, EXIT_OK
from reconciler.report import Printer
from reconciler.report import escape_markup as escape


def run(args: argparse.Namespace) -> int:
    """A line per check; exit 1 when any check found a problem."""
    from reconciler.adapters.libvirt import facts as libvirt_facts
    from reconciler.ops.doctor import PROBLEM, WARN, run_checks

    out = Printer(sys.stdout)
    checks = run_checks(args.uri, libvirt_facts.daemon_facts)
    style = {PROBLEM: "red", WARN: "yellow"}
    for check in checks:
        color = style.get(check.level, "green")
        fix = f" [dim]— fix: {escape(check.fix)}[/dim]" if check.fix and check.level != "ok" else ""
        out.print(f"[{color}]{check.level:<8}[/{color}]{escape(check.name)}: {escape(check.detail)}{fix}")
    return EXIT_ERROR if any(check.level == PROBLEM for check in checks) else EXIT_OK
