"""Arguments several commands share: the manifest path, host selection, deletion consent and the
operator's rules for Host URIs (one place, so every command spells them alike)."""

from __future__ import annotations

import argparse

from reconciler.cli.argtypes import label_selector, positive_count

DEFAULT_PATH = "manifests"


def with_path(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "path", nargs="?", default=DEFAULT_PATH, help="manifest file or folder (default: manifests/)"
    )
    with_uri_rules(sub)  # every command that reads manifests holds their Host URIs to the operator's rules


def with_hosts(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--host", action="append", metavar="NAME", help="only this host (repeatable)")
    sub.add_argument(
        "--selector",
        "-l",
        action="append",
        type=label_selector,
        metavar="KEY=VALUE",
        help="only hosts whose labels match: key=value, key!=value, key, !key; comma-separated and "
        "repeatable, all must hold (with --host: both)",
    )
    sub.add_argument(
        "--host-parallel",
        type=positive_count,
        default=16,
        metavar="N",
        help="hosts connected, planned and applied side by side (default: 16)",
    )


def with_allow_delete(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--allow-delete", action="store_true", help="undefine managed domains gone from git")


def with_allow_mass_delete(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--allow-mass-delete",
        action="store_true",
        help="allow undefining more than a host's maxDeletions (default 5) or half of its managed domains",
    )


def with_uri_rules(sub: argparse.ArgumentParser) -> None:
    """What Host URIs may use beyond the defaults (no query parameter; transports unix, tls, tcp, ssh,
    libssh, libssh2): the operator's to say, here or in the environment, never a manifest's."""
    for kind, example in (("param", "socket"), ("transport", "ext")):
        help_text = f"let Host URIs use the {kind} NAME, e.g. {example} (repeatable)"
        sub.add_argument(f"--allow-uri-{kind}", action="append", metavar="NAME", help=help_text)
