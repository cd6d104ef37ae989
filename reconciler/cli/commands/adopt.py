"""``import``, ``backup`` and ``restore``: taking over live domains, and keeping copies of them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.cli.exit_codes import EXIT_ERROR, EXIT_OK
from reconciler.cli.inputs import ask_git, one_host
from reconciler.report import Printer
from reconciler.report import escape_markup as escape

if TYPE_CHECKING:
    from reconciler.ops.adopt import Report
    from reconciler.spec.models import Host


def run_import(args: argparse.Namespace) -> int:
    """Write manifests for live domains and mark them managed; exit 1 when any was refused."""
    from reconciler.adapters.libvirt import host as libvirt_host
    from reconciler.ops.adopt import ImportRequest, import_domains

    manifests, host = one_host(args)
    out = Path(args.out).resolve()

    def manifest_path(file: Path) -> str:
        try:
            return str(file.relative_to(manifests.root))
        except ValueError:
            return file.name

    git = ask_git(str(manifests.root))
    with libvirt_host.connect(host, write=True) as hypervisor:
        request = ImportRequest(
            host=host.name,
            out=out,
            names=args.domains,
            manifest_path=manifest_path,
            revision=git.revision(),
            force=args.force,
            expire=args.expire,  # a timedelta or None: checked by the parser's ``expiry``
            root=git.root_identity(),
        )
        report = import_domains(hypervisor, request)
    return _print_report(report, "imported")


def run_backup(args: argparse.Namespace) -> int:
    """Each domain's XML and a manifest of its images (the images too with ``--with-images``)."""
    from rich.progress import Progress

    from reconciler.adapters.libvirt import host as libvirt_host
    from reconciler.ops.adopt import BackupRequest, backup_domains

    _, host = one_host(args)
    with libvirt_host.connect(host, write=False) as hypervisor, Progress(transient=True) as progress:

        def track(path: str, size: int, _number: int) -> Callable[[int], None]:
            task = progress.add_task(f"copying {path}", total=size)
            return lambda done: progress.advance(task, done)

        request = BackupRequest(
            host=host.name,
            out=Path(args.out),
            names=args.domains,
            local=_is_local(host),
            with_images=args.with_images,
            force=args.force,
        )
        report = backup_domains(hypervisor, request, progress=track)
    return _print_report(report, "backed up")


def run_restore(args: argparse.Namespace) -> int:
    """Define domains from a backup whose images are intact."""
    from reconciler.adapters.libvirt import host as libvirt_host
    from reconciler.ops.adopt import read_backup, restore_domains

    _, host = one_host(args)
    backup = read_backup(Path(args.source), args.domains)
    with libvirt_host.connect(host, write=True) as hypervisor:
        report = restore_domains(
            hypervisor, backup, local=_is_local(host), allow_missing_images=args.allow_missing_images
        )
    return _print_report(report, "restored")


def _print_report(report: Report, verb: str) -> int:
    out = Printer(sys.stdout)
    for name in report.done:
        out.print(f"  [green]✓[/green] {verb} {escape(name)}")
    for reason in report.refused:
        first, *more = reason.split("\n")  # a reason may add lines (the command that fixes it)
        out.print(f"  [red]✗ refused[/red] {escape(first)}")
        for line in more:
            out.print(f"      {escape(line.strip())}")
    out.print(f"[bold]{len(report.done)} {verb}, {len(report.refused)} refused.[/bold]")
    return EXIT_ERROR if report.refused else EXIT_OK


def _is_local(host: Host) -> bool:
    """Whether the host's disk images are files on this machine (the sandbox's are, in the test sense)."""
    return host.spec.address.is_sandbox or host.spec.address.is_local
