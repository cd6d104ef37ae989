"""The command table and the argument parser: per command, its arguments and the function that runs it.

Building the parser imports no command module, so ``--help`` and ``--version`` start at once. Values
with a format (durations, addresses) are checked by the argparse ``type=`` functions of
:mod:`reconciler.cli.argtypes`: a wrong one is a usage error (exit 2) named after its option.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from reconciler import __version__
from reconciler.cli import argtypes
from reconciler.cli.argtypes import expiry, listen_address, period, positive_count
from reconciler.cli.shared_arguments import (
    with_allow_delete,
    with_allow_mass_delete,
    with_hosts,
    with_path,
    with_uri_rules,
)

#: What ``init --install-from`` writes by default: the git URL, with a placeholder for its owner.
DEFAULT_INSTALL_FROM = "virt-reconcile @ git+https://github.com/OWNER/virt-reconcile@v" + __version__


def _plan(plan: argparse.ArgumentParser) -> None:
    """``plan [PATH]``: a dry run, live or against snapshots."""
    with_path(plan)
    plan.add_argument("--format", choices=("text", "json", "markdown"), default="text")
    plan.add_argument("--out", metavar="FILE", help="also save the plan for apply --plan FILE")
    plan.add_argument("--state", metavar="SNAPSHOT", help="plan against snapshot file(s), not the live hosts")
    with_hosts(plan)
    plan.add_argument(
        "--allow-delete", action="store_true", help="plan to undefine managed domains gone from git"
    )
    with_allow_mass_delete(plan)
    _with_overwrite_newer(plan)


def _with_overwrite_newer(parser: argparse.ArgumentParser) -> None:
    """``--overwrite-newer``: change and prune domains a revision this checkout lacks wrote (held
    otherwise), for a rollback by force-push or a branch switch."""
    parser.add_argument(
        "--overwrite-newer",
        action="store_true",
        help="change domains written by a revision this checkout does not contain (a newer commit, "
        "another branch; held otherwise): a rollback or a branch switch",
    )


def _apply(apply: argparse.ArgumentParser) -> None:
    """``apply [PATH]``: plan, then change the hosts."""
    with_path(apply)
    with_hosts(apply)
    with_allow_delete(apply)
    with_allow_mass_delete(apply)
    apply.add_argument(
        "--auto-approve",
        action="store_true",
        help="do not ask before undefining or moving domains (the question is asked only on a terminal)",
    )
    exactly = apply.add_mutually_exclusive_group()
    exactly.add_argument("--plan", metavar="FILE", help="apply exactly this saved plan (refused when stale)")
    exactly.add_argument(
        "--restart-pending",
        action="store_true",
        help="also restart running domains whose definition waits for a restart (graceful shutdown, start)",
    )
    apply.add_argument(
        "--max-unavailable",
        type=positive_count,
        default=1,
        metavar="N",
        help="with --restart-pending: domains of a host restarting at once (default: 1), "
        "whatever --parallel says",
    )
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
    windows = "apply now on hosts outside their sync windows (Host spec.syncWindows)"
    apply.add_argument("--ignore-sync-windows", action="store_true", help=windows)
    _with_overwrite_newer(apply)


def _import(importer: argparse.ArgumentParser) -> None:
    """``import [PATH] --host H --out DIR [DOMAIN ...]``."""
    with_path(importer)
    importer.add_argument("--host", required=True, metavar="NAME")
    importer.add_argument(
        "--out", required=True, metavar="DIR", help="folder for the manifests (new or empty)"
    )
    importer.add_argument(
        "--force",
        action="store_true",
        help="re-import managed domains; write into a non-empty DIR (only their manifests are replaced)",
    )
    importer.add_argument(
        "--expire",
        type=expiry,
        metavar="DURATION",
        help="the pending mark that keeps a daemon from pruning an imported domain lapses after "
        "DURATION (e.g. 24h, 30m; default: only once its manifest is applied)",
    )
    importer.add_argument("domains", nargs="*", metavar="DOMAIN", help="default: every unmanaged domain")


def _backup(backup: argparse.ArgumentParser) -> None:
    """``backup [PATH] --host H --out DIR [DOMAIN ...]``."""
    with_path(backup)
    backup.add_argument("--host", required=True, metavar="NAME")
    backup.add_argument("--out", required=True, metavar="DIR", help="backup folder (new or empty)")
    backup.add_argument("--with-images", action="store_true", help="copy the disk images too (sparse)")
    backup.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty DIR (only the backed-up domains' entries are replaced)",
    )
    backup.add_argument("domains", nargs="*", metavar="DOMAIN", help="default: every domain")


def _restore(restore: argparse.ArgumentParser) -> None:
    """``restore [PATH] --host H --from DIR [DOMAIN ...]``."""
    with_path(restore)
    restore.add_argument("--host", required=True, metavar="NAME")
    restore.add_argument("--from", required=True, dest="source", metavar="DIR", help="backup folder")
    restore.add_argument("--allow-missing-images", action="store_true", help="define even without the images")
    restore.add_argument("domains", nargs="*", metavar="DOMAIN", help="default: every domain in the backup")


def _snapshot(snapshot: argparse.ArgumentParser) -> None:
    """``snapshot [PATH] --out FILE``."""
    with_path(snapshot)
    snapshot.add_argument("--out", required=True, metavar="FILE", help="snapshot file to write")
    with_hosts(snapshot)


def _daemon(daemon: argparse.ArgumentParser) -> None:
    """``daemon --source GIT_URL_OR_DIR``: reconcile continuously."""
    daemon.add_argument(
        "--source",
        required=True,
        metavar="GIT_URL_OR_DIR",
        help="git URL (file://, ssh://, https://, user@host:path) or a plain directory",
    )
    daemon.add_argument("--branch", default="main")
    daemon.add_argument("--path", default="manifests", help="manifest folder inside the repository")
    with_hosts(daemon)
    poll, resync = "git poll interval, jittered, ≥ 1s", "full reconcile at least this often, ≥ 1s"
    daemon.add_argument("--interval", type=period, default="30s", help=f"{poll} (default: 30s)")
    daemon.add_argument("--resync", type=period, default="10m", help=f"{resync} (default: 10m)")
    listen = "HTTP address (default: %(default)s; beyond loopback, a warning names what is exposed)"
    daemon.add_argument("--listen", type=listen_address, default="127.0.0.1:9469", help=listen)
    daemon.add_argument("--state-dir", default="/var/lib/virt-reconcile", help="clone and status live here")
    daemon.add_argument("--webhook-secret-file", metavar="FILE", help="enables POST /hooks/git (HMAC)")
    with_allow_delete(daemon)
    daemon.add_argument("--shutdown-timeout", type=float, default=60.0, metavar="SECONDS")
    copy, publish = "copy each host's snapshot here after a reconcile", "run CMD with a fresh snapshot's path"
    daemon.add_argument("--snapshot-to", metavar="DIR", help=copy)
    daemon.add_argument("--snapshot-command", metavar="CMD", help=f"{publish} (e.g. an upload)")
    notify = "on applied/refused/error/drift/deferred: POST to https://… (JSON), slack+https://… (Slack)"
    kinds = f"{notify}, or a commit status: github:OWNER/REPO?token-file=FILE[&api=URL]; @FILE or "
    kinds += "env:NAME reads the value from a file or a variable, out of the command line (repeatable)"
    daemon.add_argument("--notify", action="append", type=argtypes.notify_target, metavar="URL", help=kinds)
    _with_revision_checks(daemon)
    with_uri_rules(daemon)
    lines = "log lines: text (TIME LEVEL message) or json (one object per line) (default: text)"
    daemon.add_argument("--log-format", choices=("text", "json"), default="text", help=lines)


def _with_revision_checks(daemon: argparse.ArgumentParser) -> None:
    """What a new revision of a git source must pass before it is checked out and applied."""
    signed = "refuse a revision whose head commit no key in FILE signed (allowed-signers, GnuPG keyring)"
    daemon.add_argument("--verify-signatures", metavar="FILE", help=signed)
    forward = "refuse a revision that does not descend from the one checked out (a force-push back)"
    daemon.add_argument("--require-fast-forward", action="store_true", help=forward)


def _status(status: argparse.ArgumentParser) -> None:
    """``status [--url URL]``."""
    status.add_argument("--url", default="http://127.0.0.1:9469", help="the daemon's address")


def _doctor(doctor: argparse.ArgumentParser) -> None:
    """``doctor [--uri URI]``."""
    doctor.add_argument(
        "--uri", default="qemu:///system", help="libvirt URI to check (default: qemu:///system)"
    )


def _schema(schema: argparse.ArgumentParser) -> None:
    """``schema [--out DIR]``."""
    schema.add_argument(
        "--out", default="schemas", metavar="DIR", help="folder to write into (default: schemas/)"
    )


def _init(init: argparse.ArgumentParser) -> None:
    """``init DIR [--force] [--install-from SPEC]``: a new manifests repository."""
    init.add_argument("directory", metavar="DIR", help="folder to create (new or empty)")
    init.add_argument(
        "--force", action="store_true", help="write into a non-empty DIR; existing files are kept"
    )
    init.add_argument(
        "--install-from",
        default=DEFAULT_INSTALL_FROM,
        metavar="SPEC",
        help="what the plan workflow pip-installs, e.g. 'virt-reconcile @ git+https://HOST/PATH@TAG' "
        "(default: the git URL with OWNER to replace, which the workflow reports on each pull request)",
    )


@dataclass(frozen=True)
class Command:
    """One command: its name and help line, the function that adds its arguments, and the one that
    runs it, as ``module:function`` under ``reconciler.cli.commands`` (imported only when it runs)."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    handler: str


#: Every command, in the order ``--help`` lists them.
COMMANDS: tuple[Command, ...] = (
    Command("validate", "parse and check manifests only", with_path, "validate:run"),
    Command("plan", "show what apply would change (dry run)", _plan, "plan:run"),
    Command("apply", "plan, then change the hosts to match the manifests", _apply, "apply:run"),
    Command("import", "write manifests for live domains and mark them managed", _import, "adopt:run_import"),
    Command("backup", "each domain's XML and a manifest of its disk images", _backup, "adopt:run_backup"),
    Command(
        "restore",
        "define domains from a backup whose images are intact; start those that ran",
        _restore,
        "adopt:run_restore",
    ),
    Command("snapshot", "write the observed state of hosts as JSON", _snapshot, "snapshot:run"),
    Command("daemon", "reconcile continuously from a git repository or a directory", _daemon, "daemon:run"),
    Command("status", "print a daemon's /status; exit 1 on a refusal or error", _status, "status:run"),
    Command("doctor", "check this machine: kvm, /dev/kvm, libvirtd, KSM, swap", _doctor, "doctor:run"),
    Command("schema", "write the manifests' JSON Schemas", _schema, "schema:run"),
    Command(
        "init",
        "start a manifests repository: a sandbox host, a domain, a plan workflow",
        _init,
        "init_repository:run",
    ),
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser for every command.

    With ``only`` (a command name, or ``""`` for none), only that command's arguments are added:
    every command is still listed (``--help``, usage errors), but the options of the others, which
    this run cannot use, are not built (a few milliseconds of every start-up).
    """
    parser = argparse.ArgumentParser(
        prog="virt-reconcile",
        description="Declarative, GitOps-style reconciler for KVM hosts managed by libvirt.",
    )
    parser.add_argument("--version", action="version", version=f"virt-reconcile {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sub = commands.add_parser(command.name, help=command.help)
        if only is None or command.name == only:
            command.arguments(sub)
    return parser


def command_named(argv: Sequence[str]) -> str:
    """The command ``argv`` names: its first word that is not an option ("" when there is none).

    Exact, since the top-level parser has no option that takes a value (only ``--version`` and
    ``--help``), and argparse takes a command name only when written in full.
    """
    return next((word for word in argv if not word.startswith("-")), "")
