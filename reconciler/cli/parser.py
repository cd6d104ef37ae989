"""The argument parser: one small function per command, and nothing a command needs to run.

Building the parser imports no command module, so ``--help`` and ``--version`` start at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeAlias

from reconciler import __version__

DEFAULT_PATH = "manifests"

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _with_path(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "path", nargs="?", default=DEFAULT_PATH, help="manifest file or folder (default: manifests/)"
    )


def _with_hosts(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--host", action="append", metavar="NAME", help="only this host (repeatable)")


def _with_allow_delete(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--allow-delete", action="store_true", help="undefine managed domains gone from git")


def add_validate(commands: Commands) -> None:
    """``validate [PATH]``."""
    _with_path(commands.add_parser("validate", help="parse and check manifests only"))


def add_plan(commands: Commands) -> None:
    """``plan [PATH]``: a dry run, live or against snapshots."""
    plan = commands.add_parser("plan", help="show what apply would change (dry run)")
    _with_path(plan)
    plan.add_argument("--format", choices=("text", "json", "markdown"), default="text")
    plan.add_argument("--out", metavar="FILE", help="also save the plan for apply --plan FILE")
    plan.add_argument("--state", metavar="SNAPSHOT", help="plan against snapshot file(s), not the live hosts")
    _with_hosts(plan)
    plan.add_argument(
        "--allow-delete", action="store_true", help="plan to undefine managed domains gone from git"
    )


def add_apply(commands: Commands) -> None:
    """``apply [PATH]``: plan, then change the hosts."""
    apply = commands.add_parser("apply", help="plan, then change the hosts to match the manifests")
    _with_path(apply)
    _with_hosts(apply)
    _with_allow_delete(apply)
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


def add_import(commands: Commands) -> None:
    """``import [PATH] --host H --out DIR [DOMAIN ...]``."""
    importer = commands.add_parser("import", help="write manifests for live domains and mark them managed")
    _with_path(importer)
    importer.add_argument("--host", required=True, metavar="NAME")
    importer.add_argument(
        "--out", required=True, metavar="DIR", help="folder for the manifests (new or empty)"
    )
    importer.add_argument("--force", action="store_true", help="replace DIR; re-import managed domains")
    importer.add_argument("domains", nargs="*", metavar="DOMAIN", help="default: every unmanaged domain")


def add_backup(commands: Commands) -> None:
    """``backup [PATH] --host H --out DIR [DOMAIN ...]``."""
    backup = commands.add_parser("backup", help="each domain's XML and a manifest of its disk images")
    _with_path(backup)
    backup.add_argument("--host", required=True, metavar="NAME")
    backup.add_argument("--out", required=True, metavar="DIR", help="backup folder (new or empty)")
    backup.add_argument("--with-images", action="store_true", help="copy the disk images too (sparse)")
    backup.add_argument("--force", action="store_true", help="replace a non-empty DIR")
    backup.add_argument("domains", nargs="*", metavar="DOMAIN", help="default: every domain")


def add_restore(commands: Commands) -> None:
    """``restore [PATH] --host H --from DIR [DOMAIN ...]``."""
    restore = commands.add_parser("restore", help="define domains from a backup whose images are intact")
    _with_path(restore)
    restore.add_argument("--host", required=True, metavar="NAME")
    restore.add_argument("--from", required=True, dest="source", metavar="DIR", help="backup folder")
    restore.add_argument("--allow-missing-images", action="store_true", help="define even without the images")
    restore.add_argument("domains", nargs="*", metavar="DOMAIN", help="default: every domain in the backup")


def add_snapshot(commands: Commands) -> None:
    """``snapshot [PATH] --out FILE``."""
    snapshot = commands.add_parser("snapshot", help="write the observed state of hosts as JSON")
    _with_path(snapshot)
    snapshot.add_argument("--out", required=True, metavar="FILE", help="snapshot file to write")
    _with_hosts(snapshot)


def add_daemon(commands: Commands) -> None:
    """``daemon --source GIT_URL_OR_DIR``: reconcile continuously."""
    daemon = commands.add_parser("daemon", help="reconcile continuously from a git repository or a directory")
    daemon.add_argument(
        "--source",
        required=True,
        metavar="GIT_URL_OR_DIR",
        help="git URL (file://, ssh://, https://, user@host:path) or a plain directory",
    )
    daemon.add_argument("--branch", default="main")
    daemon.add_argument("--path", default="manifests", help="manifest folder inside the repository")
    _with_hosts(daemon)
    daemon.add_argument("--interval", default="30s", help="git poll interval, jittered (default: 30s)")
    daemon.add_argument("--resync", default="10m", help="full reconcile at least this often (default: 10m)")
    daemon.add_argument("--listen", default="127.0.0.1:9469", help="HTTP address (default: 127.0.0.1:9469)")
    daemon.add_argument("--state-dir", default="/var/lib/virt-reconcile", help="clone and status live here")
    daemon.add_argument("--webhook-secret-file", metavar="FILE", help="enables POST /hooks/git (HMAC)")
    _with_allow_delete(daemon)
    daemon.add_argument("--shutdown-timeout", type=float, default=60.0, metavar="SECONDS")
    daemon.add_argument(
        "--snapshot-to", metavar="DIR", help="copy each host's snapshot here after a reconcile"
    )
    daemon.add_argument(
        "--snapshot-command", metavar="CMD", help="run CMD with a fresh snapshot's path (e.g. an upload)"
    )


def add_status(commands: Commands) -> None:
    """``status [--url URL]``."""
    status = commands.add_parser("status", help="print a running daemon's /status for people")
    status.add_argument("--url", default="http://127.0.0.1:9469", help="the daemon's address")


def add_doctor(commands: Commands) -> None:
    """``doctor [--uri URI]``."""
    doctor = commands.add_parser("doctor", help="check this machine: kvm, /dev/kvm, libvirtd, KSM, swap")
    doctor.add_argument(
        "--uri", default="qemu:///system", help="libvirt URI to check (default: qemu:///system)"
    )


def add_schema(commands: Commands) -> None:
    """``schema [--out DIR]``."""
    schema = commands.add_parser("schema", help="write the manifests' JSON Schemas")
    schema.add_argument(
        "--out", default="schemas", metavar="DIR", help="folder to write into (default: schemas/)"
    )


def add_init(commands: Commands) -> None:
    """``init DIR [--force]``: a new manifests repository."""
    init = commands.add_parser(
        "init", help="start a manifests repository: a sandbox host, a domain, a plan workflow"
    )
    init.add_argument("directory", metavar="DIR", help="folder to create (new or empty)")
    init.add_argument(
        "--force", action="store_true", help="write into a non-empty DIR; existing files are kept"
    )


#: The commands in the order ``--help`` lists them.
COMMANDS: tuple[Callable[[Commands], None], ...] = (
    add_validate,
    add_plan,
    add_apply,
    add_import,
    add_backup,
    add_restore,
    add_snapshot,
    add_daemon,
    add_status,
    add_doctor,
    add_schema,
    add_init,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    parser = argparse.ArgumentParser(
        prog="virt-reconcile",
        description="Declarative, GitOps-style reconciler for KVM hosts managed by libvirt.",
    )
    parser.add_argument("--version", action="version", version=f"virt-reconcile {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(commands)
    return parser
