"""Command line: argument parsing and wiring of the core to the libvirt and git edges, nothing else.

Exit codes (DESIGN §5): validate 0 valid / 1 invalid; plan 0 no changes / 2 changes / 3 refused /
1 error; apply 0 done or nothing to do / 3 refused / 1 error.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from rich.markup import escape

from reconciler import __version__
from reconciler.engine.apply import ApplySettings, Hooks
from reconciler.engine.plan import HostPlan
from reconciler.engine.reconcile import Connector, Outcome, ReconcileOptions, reconcile, select_hosts
from reconciler.errors import ManifestError, ReconcilerError
from reconciler.files.atomic import write_atomically
from reconciler.files.content_cache import ContentCache
from reconciler.ops.adopt import Report
from reconciler.report.render import (
    Printer,
    render_host_text,
    render_json,
    render_markdown,
    render_result,
    summary_line,
)
from reconciler.spec.manifests import ManifestSet, load_manifests
from reconciler.spec.models import Host

EXIT_OK, EXIT_ERROR, EXIT_CHANGES, EXIT_REFUSED = 0, 1, 2, 3
DEFAULT_PATH = "manifests"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    parser = argparse.ArgumentParser(
        prog="virt-reconcile",
        description="Declarative, GitOps-style reconciler for KVM hosts managed by libvirt.",
    )
    parser.add_argument("--version", action="version", version=f"virt-reconcile {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_path(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "path", nargs="?", default=DEFAULT_PATH, help="manifest file or folder (default: manifests/)"
        )

    validate = commands.add_parser("validate", help="parse and check manifests only")
    with_path(validate)

    plan = commands.add_parser("plan", help="show what apply would change (dry run)")
    with_path(plan)
    plan.add_argument("--format", choices=("text", "json", "markdown"), default="text")
    plan.add_argument("--out", metavar="FILE", help="also save the plan for apply --plan FILE")
    plan.add_argument("--state", metavar="SNAPSHOT", help="plan against snapshot file(s), not the live hosts")
    plan.add_argument("--host", action="append", metavar="NAME", help="only this host (repeatable)")
    plan.add_argument(
        "--allow-delete", action="store_true", help="plan to undefine managed domains gone from git"
    )

    apply = commands.add_parser("apply", help="plan, then change the hosts to match the manifests")
    with_path(apply)
    apply.add_argument("--host", action="append", metavar="NAME", help="only this host (repeatable)")
    apply.add_argument("--allow-delete", action="store_true", help="undefine managed domains gone from git")
    apply.add_argument("--plan", metavar="FILE", help="apply exactly this saved plan (refused when stale)")
    apply.add_argument(
        "--parallel",
        type=int,
        default=8,
        metavar="N",
        help="the actions of one phase run N at a time per host (default: 8; 1 = one by one)",
    )
    apply.add_argument(
        "--shutdown-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="graceful shutdown time before a domain is forced off (default: 60)",
    )

    importer = commands.add_parser("import", help="write manifests for live domains and mark them managed")
    with_path(importer)
    importer.add_argument("--host", required=True, metavar="NAME")
    importer.add_argument(
        "--out", required=True, metavar="DIR", help="folder for the manifests (new or empty)"
    )
    importer.add_argument("--force", action="store_true", help="replace DIR; re-import managed domains")
    importer.add_argument("domains", nargs="*", metavar="DOMAIN", help="default: every unmanaged domain")

    backup = commands.add_parser("backup", help="each domain's XML and a manifest of its disk images")
    with_path(backup)
    backup.add_argument("--host", required=True, metavar="NAME")
    backup.add_argument("--out", required=True, metavar="DIR", help="backup folder (new or empty)")
    backup.add_argument("--with-images", action="store_true", help="copy the disk images too (sparse)")
    backup.add_argument("--force", action="store_true", help="replace a non-empty DIR")
    backup.add_argument("domains", nargs="*", metavar="DOMAIN", help="default: every domain")

    restore = commands.add_parser("restore", help="define domains from a backup whose images are intact")
    with_path(restore)
    restore.add_argument("--host", required=True, metavar="NAME")
    restore.add_argument("--from", required=True, dest="source", metavar="DIR", help="backup folder")
    restore.add_argument("--allow-missing-images", action="store_true", help="define even without the images")
    restore.add_argument("domains", nargs="*", metavar="DOMAIN", help="default: every domain in the backup")

    snapshot = commands.add_parser("snapshot", help="write the observed state of hosts as JSON")
    with_path(snapshot)
    snapshot.add_argument("--out", required=True, metavar="FILE", help="snapshot file to write")
    snapshot.add_argument("--host", action="append", metavar="NAME", help="only this host (repeatable)")

    daemon = commands.add_parser("daemon", help="reconcile continuously from a git repository or a directory")
    daemon.add_argument(
        "--source",
        required=True,
        metavar="GIT_URL_OR_DIR",
        help="git URL (file://, ssh://, https://, user@host:path) or a plain directory",
    )
    daemon.add_argument("--branch", default="main")
    daemon.add_argument("--path", default="manifests", help="manifest folder inside the repository")
    daemon.add_argument("--host", action="append", metavar="NAME", help="only this host (repeatable)")
    daemon.add_argument("--interval", default="30s", help="git poll interval, jittered (default: 30s)")
    daemon.add_argument("--resync", default="10m", help="full reconcile at least this often (default: 10m)")
    daemon.add_argument("--listen", default="127.0.0.1:9469", help="HTTP address (default: 127.0.0.1:9469)")
    daemon.add_argument("--state-dir", default="/var/lib/virt-reconcile", help="clone and status live here")
    daemon.add_argument("--webhook-secret-file", metavar="FILE", help="enables POST /hooks/git (HMAC)")
    daemon.add_argument("--allow-delete", action="store_true", help="undefine managed domains gone from git")
    daemon.add_argument("--shutdown-timeout", type=float, default=60.0, metavar="SECONDS")
    daemon.add_argument(
        "--snapshot-to", metavar="DIR", help="copy each host's snapshot here after a reconcile"
    )
    daemon.add_argument(
        "--snapshot-command", metavar="CMD", help="run CMD with a fresh snapshot's path (e.g. an upload)"
    )

    status = commands.add_parser("status", help="print a running daemon's /status for people")
    status.add_argument("--url", default="http://127.0.0.1:9469", help="the daemon's address")

    doctor = commands.add_parser("doctor", help="check this machine: kvm, /dev/kvm, libvirtd, KSM, swap")
    doctor.add_argument(
        "--uri", default="qemu:///system", help="libvirt URI to check (default: qemu:///system)"
    )

    schema = commands.add_parser("schema", help="write the manifests' JSON Schemas")
    schema.add_argument(
        "--out", default="schemas", metavar="DIR", help="folder to write into (default: schemas/)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # DOMAIN names may follow the options (import PATH --host H --out DIR web db): argparse
        # hands positionals after options back as unknown; anything else is an error.
        if getattr(args, "domains", None) is None or any(item.startswith("-") for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.domains = [*args.domains, *extra]
    err = Printer(sys.stderr)
    try:
        match args.command:
            case "validate":
                return _validate(args)
            case "plan":
                return _plan(args)
            case "apply":
                return _apply(args)
            case "schema":
                return _schema(args)
            case "doctor":
                return _doctor(args)
            case "daemon":
                return _daemon(args)
            case "status":
                return _status(args)
            case "snapshot":
                return _snapshot(args)
            case "import":
                return _import(args)
            case "backup":
                return _backup(args)
            case "restore":
                return _restore(args)
    except ManifestError as problem:
        count = len(problem.problems)
        plural = "s" * (count != 1)
        err.print(
            f"[red]error:[/red] the manifests are invalid ({count} problem{plural}); nothing was applied"
        )
        for item in problem.problems:
            err.print(f"  {escape(str(item))}")
        return EXIT_ERROR
    except (ReconcilerError, ValueError, OSError) as failure:
        err.print(f"[red]error:[/red] {escape(str(failure))}")
        return EXIT_ERROR
    raise AssertionError(args.command)  # pragma: no cover - argparse enforces the choices


def _hosts(args: argparse.Namespace) -> tuple[str, ...] | None:
    """The ``--host`` selection, or None for every host."""
    return tuple(args.host) if args.host else None


def _apply_settings(args: argparse.Namespace) -> ApplySettings:
    return ApplySettings(shutdown_timeout=args.shutdown_timeout, workers=max(args.parallel, 1))


def _load(path: str) -> ManifestSet:
    return load_manifests(Path(path), ContentCache.default("manifests"))


def _validate(args: argparse.Namespace) -> int:
    manifests = _load(args.path)
    domains = sum(len(d) for d in manifests.domains.values())
    Printer(sys.stdout).print(
        f"valid: {len(manifests.hosts)} host(s), {domains} domain(s) in {escape(str(args.path))}"
    )
    return EXIT_OK


def _connector() -> Connector:
    """The libvirt adapter, imported only by the commands that talk to hosts."""
    from reconciler.adapters import libvirt_host

    return lambda host, write: libvirt_host.connect(host, write=write)


def _revision(manifests: ManifestSet) -> str:
    from reconciler.adapters.gitsource import revision_of

    return revision_of(manifests.root)


def _plan(args: argparse.Namespace) -> int:
    manifests = _load(args.path)
    select_hosts(manifests, args.host)
    out = Printer(sys.stdout)
    text = args.format == "text"
    connect = _snapshot_connector(Path(args.state)) if args.state else _connector()
    outcome = reconcile(
        manifests,
        connect,
        ReconcileOptions(hosts=_hosts(args), allow_delete=args.allow_delete, revision=_revision(manifests)),
        Hooks(on_plan=(lambda host: render_host_text(out, host, blank_after=True)) if text else None),
        parse_cache=None if args.state else ContentCache.default("domains"),
    )
    if text:
        out.print(f"[bold]{escape(summary_line(outcome.plan))}[/bold]")
    elif args.format == "markdown":
        sys.stdout.write(render_markdown(outcome.plan))
    else:
        sys.stdout.write(render_json(outcome.plan))
    if args.out:
        _save(Path(args.out), outcome, manifests)
    if outcome.failed:
        return EXIT_ERROR
    if outcome.plan.refused:
        return EXIT_REFUSED
    return EXIT_CHANGES if outcome.plan.has_changes else EXIT_OK


def _snapshot_connector(path: Path) -> Connector:
    """Hosts read from snapshot files: plans with no connection to any hypervisor."""
    from reconciler.errors import PermanentHostError
    from reconciler.offline.snapshot import SnapshotHypervisor, load_snapshots

    hosts = load_snapshots(path)

    @contextmanager
    def connect(host: Host, _write: bool) -> Iterator[SnapshotHypervisor]:
        if host.name not in hosts:
            raise PermanentHostError(host.name, f"not in the snapshot {path}")
        yield SnapshotHypervisor(host.name, hosts[host.name])

    return connect


def _save(path: Path, outcome: Outcome, manifests: ManifestSet) -> None:
    from reconciler.offline.savedplan import save_plan
    from reconciler.offline.snapshot import fingerprint

    observed = {name: host.observed for name, host in outcome.plan.hosts.items() if host.observed is not None}
    save_plan(
        path,
        outcome.plan,
        fingerprints={name: fingerprint(state) for name, state in observed.items()},
        policies={
            name: (manifests.hosts[name].spec.capacity, manifests.hosts[name].spec.overcommit)
            for name in observed
        },
    )


def _adopt_host(args: argparse.Namespace) -> tuple[ManifestSet, Host]:
    manifests = _load(args.path)
    [name] = select_hosts(manifests, [args.host])
    return manifests, manifests.hosts[name]


def _report(report: Report, verb: str) -> int:
    out = Printer(sys.stdout)
    for name in report.done:
        out.print(f"  [green]✓[/green] {verb} {escape(name)}")
    for reason in report.refused:
        out.print(f"  [red]✗ refused[/red] {escape(reason)}")
    out.print(f"[bold]{len(report.done)} {verb}, {len(report.refused)} refused.[/bold]")
    return EXIT_ERROR if report.refused else EXIT_OK


def _is_local(host: Host) -> bool:
    """Whether the host's disk images are files on this machine (the sandbox's are, in the test sense)."""
    return host.spec.address.is_sandbox or host.spec.address.is_local


def _import(args: argparse.Namespace) -> int:
    from reconciler.adapters import libvirt_host
    from reconciler.ops.adopt import import_domains

    manifests, host = _adopt_host(args)
    out = Path(args.out).resolve()

    def manifest_path(file: Path) -> str:
        try:
            return str(file.relative_to(manifests.root))
        except ValueError:
            return file.name

    with libvirt_host.connect(host, write=True) as hypervisor:
        report = import_domains(
            hypervisor,
            host.name,
            out,
            names=args.domains,
            manifest_path=manifest_path,
            revision=_revision(manifests),
            force=args.force,
        )
    return _report(report, "imported")


def _backup(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from reconciler.adapters import libvirt_host
    from reconciler.ops.adopt import backup_domains

    _, host = _adopt_host(args)
    with libvirt_host.connect(host, write=False) as hypervisor, Progress(transient=True) as progress:

        def track(path: str, size: int, _number: int) -> Callable[[int], None]:
            task = progress.add_task(f"copying {path}", total=size)
            return lambda done: progress.advance(task, done)

        report = backup_domains(
            hypervisor,
            host.name,
            Path(args.out),
            names=args.domains,
            local=_is_local(host),
            with_images=args.with_images,
            force=args.force,
            progress=track,
        )
    return _report(report, "backed up")


def _restore(args: argparse.Namespace) -> int:
    from reconciler.adapters import libvirt_host
    from reconciler.ops.adopt import read_backup, restore_domains

    _, host = _adopt_host(args)
    backup = read_backup(Path(args.source), args.domains)
    with libvirt_host.connect(host, write=True) as hypervisor:
        report = restore_domains(
            hypervisor, backup, local=_is_local(host), allow_missing_images=args.allow_missing_images
        )
    return _report(report, "restored")


def _snapshot(args: argparse.Namespace) -> int:
    from reconciler.adapters import libvirt_host
    from reconciler.offline.snapshot import Snapshot, snapshot_host

    manifests = _load(args.path)
    hosts = {}
    for name in select_hosts(manifests, args.host):
        host = manifests.hosts[name]
        with libvirt_host.connect(host, write=False) as hypervisor:
            hosts[name] = snapshot_host(host.spec.uri, hypervisor.observe())
    snapshot = Snapshot(taken_at=datetime.now(UTC).isoformat(timespec="seconds"), hosts=hosts)
    write_atomically(Path(args.out), snapshot.model_dump_json(by_alias=True, indent=2) + "\n", mode=0o644)
    domains = sum(len(h.domains) for h in hosts.values())
    Printer(sys.stderr).print(f"wrote {escape(args.out)}: {len(hosts)} host(s), {domains} domain(s)")
    return EXIT_OK


def _apply(args: argparse.Namespace) -> int:
    if args.plan:
        return _apply_saved(args)
    manifests = _load(args.path)
    select_hosts(manifests, args.host)
    out = Printer(sys.stdout)

    def show_plan(host: HostPlan) -> None:
        render_host_text(out, host)
        if not host.blocked and host.actions:
            out.print("  [dim]applying…[/dim]")

    outcome: Outcome = reconcile(
        manifests,
        _connector(),
        ReconcileOptions(
            apply=True,
            hosts=_hosts(args),
            allow_delete=args.allow_delete,
            revision=_revision(manifests),
            settings=_apply_settings(args),
        ),
        Hooks(on_plan=show_plan, on_result=lambda result: render_result(out, result)),
        parse_cache=ContentCache.default("domains"),
    )
    return _apply_verdict(out, outcome)


def _apply_verdict(out: Printer, outcome: Outcome) -> int:
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


def _apply_saved(args: argparse.Namespace) -> int:
    from reconciler.offline.savedplan import apply_saved, load_plan

    out = Printer(sys.stdout)

    def show_plan(host: HostPlan) -> None:
        render_host_text(out, host)
        if not host.blocked and host.actions:
            out.print("  [dim]applying the saved plan…[/dim]")

    outcome = apply_saved(
        load_plan(Path(args.plan)),
        _connector(),
        _apply_settings(args),
        Hooks(on_plan=show_plan, on_result=lambda result: render_result(out, result)),
    )
    return _apply_verdict(out, outcome)


GIT_URL = re.compile(r"^(file|ssh|https?|git)://|^[\w.-]+@[\w.-]+:")


def _daemon(args: argparse.Namespace) -> int:
    from reconciler.adapters import libvirt_host
    from reconciler.adapters.watch import watch_directory
    from reconciler.daemon.loop import (
        Daemon,
        DaemonConfig,
        DirectorySource,
        GitSource,
        parse_duration,
        parse_listen,
    )

    state_dir = Path(args.state_dir)
    secret = Path(args.webhook_secret_file).read_bytes().strip() if args.webhook_secret_file else None
    config = DaemonConfig(
        hosts=args.host or [],
        interval=parse_duration(args.interval),
        resync=parse_duration(args.resync),
        listen=parse_listen(args.listen),
        state_dir=state_dir,
        webhook_secret=secret,
        allow_delete=args.allow_delete,
        shutdown_timeout=args.shutdown_timeout,
        snapshot_to=Path(args.snapshot_to) if args.snapshot_to else None,
        snapshot_command=args.snapshot_command,
    )
    source = (
        GitSource(args.source, args.branch, args.path, state_dir)
        if GIT_URL.match(args.source)
        else DirectorySource(Path(args.source))
    )
    daemon = Daemon(
        config,
        source,
        _connector(),
        events=libvirt_host.DomainEvents,
        watch=watch_directory,
        log=lambda line: print(line, flush=True),
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: daemon.stop.set())
    return daemon.run()


def _status(args: argparse.Namespace) -> int:
    url = args.url.rstrip("/") + "/status"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            document = json.load(response)
    except (OSError, ValueError) as err:
        raise ReconcilerError(f"cannot read {url}: {err}") from err
    out = Printer(sys.stdout)
    source = document.get("source", {})
    if source.get("message"):
        out.print(f"[red]source[/red]: {escape(source['message'])}")
    colors = {"applied": "green", "unchanged": "green", "refused": "red", "error": "red"}
    for name, host in document.get("hosts", {}).items():
        color = colors.get(host.get("result"), "yellow")
        applied = (host.get("appliedRevision") or "")[:12] or "never"
        out.print(
            f"[bold]{escape(name)}[/bold]  [{color}]{escape(host.get('result', '?'))}[/{color}]  "
            f"revision {escape((host.get('revision') or '')[:12])}  applied {escape(applied)}  "
            f"[dim]{escape(host.get('time', ''))}[/dim]"
        )
        if host.get("message"):
            out.print(f"  {escape(host['message'])}")
    return EXIT_OK


def _doctor(args: argparse.Namespace) -> int:
    from reconciler.adapters import libvirt_host
    from reconciler.ops.doctor import PROBLEM, WARN, run_checks

    out = Printer(sys.stdout)
    checks = run_checks(args.uri, libvirt_host.daemon_facts)
    style = {PROBLEM: "red", WARN: "yellow"}
    for check in checks:
        color = style.get(check.level, "green")
        fix = f" [dim]— fix: {escape(check.fix)}[/dim]" if check.fix and check.level != "ok" else ""
        out.print(f"[{color}]{check.level:<8}[/{color}]{escape(check.name)}: {escape(check.detail)}{fix}")
    return EXIT_ERROR if any(check.level == PROBLEM for check in checks) else EXIT_OK


def _schema(args: argparse.Namespace) -> int:
    from reconciler.ops.schema import write_schemas

    for path in write_schemas(Path(args.out)):
        print(f"wrote {path}")
    return EXIT_OK
