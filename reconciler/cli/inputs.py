"""What the commands read: the manifests, the ``--host`` selection, the hosts and the git revision.

The libvirt and git adapters are imported only when a command calls for them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.files.content_cache import ContentCache
from reconciler.spec.manifests import ManifestSet, load_manifests

if TYPE_CHECKING:
    from reconciler.engine.reconcile import Connector
    from reconciler.spec.models import Host


def load(path: str) -> ManifestSet:
    """The manifests at ``path``, parsed through the on-disk cache."""
    return load_manifests(Path(path), ContentCache.default("manifests"))


def selected_hosts(args: argparse.Namespace) -> tuple[str, ...] | None:
    """The ``--host`` selection, or None for every host."""
    return tuple(args.host) if args.host else None


def connector() -> Connector:
    """The libvirt adapter, imported only by the commands that talk to hosts."""
    from reconciler.adapters import libvirt_host

    return lambda host, write: libvirt_host.connect(host, write=write)


def revision(manifests: ManifestSet) -> str:
    """The commit the manifests come from ('' outside git)."""
    from reconciler.adapters.gitsource import revision_of

    return revision_of(manifests.root)


def root_identity(manifests: ManifestSet) -> str:
    """Which manifest root was loaded (recorded in ownership; only the same whole root prunes)."""
    from reconciler.adapters.gitsource import root_identity

    return root_identity(manifests.root)


def one_host(args: argparse.Namespace) -> tuple[ManifestSet, Host]:
    """The manifests and the one host named by ``--host`` (import, backup, restore)."""
    from reconciler.engine.reconcile import select_hosts

    manifests = load(args.path)
    [name] = select_hosts(manifests, [args.host])
    return manifests, manifests.hosts[name]
