"""What the commands read: the manifests, the ``--host`` selection, the hosts and the git revision.

The libvirt and git adapters are imported only when a command calls for them.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.files.content_cache import ContentCache
from reconciler.spec.hosturi import UriRules
from reconciler.spec.manifests import ManifestSet, load_manifests

#: Query parameters Host URIs may use, comma-separated (``socket,keyfile``), beside ``--allow-uri-param``.
URI_PARAMS_ENV = "VIRT_RECONCILE_ALLOW_URI_PARAMS"
#: Transports Host URIs may use beyond the default ones (``ext``), beside ``--allow-uri-transport``.
URI_TRANSPORTS_ENV = "VIRT_RECONCILE_ALLOW_URI_TRANSPORTS"

if TYPE_CHECKING:
    from reconciler.adapters.gitfacts import GitFacts
    from reconciler.adapters.libvirt.early import EarlyOpens
    from reconciler.engine.reconcile import Connector, ReconcileOptions
    from reconciler.spec.labels import Selector
    from reconciler.spec.models import Host


def load(path: str, args: argparse.Namespace | None = None, early: EarlyOpens | None = None) -> ManifestSet:
    """The manifests at ``path``, parsed through the on-disk cache, Host URIs held to the operator's
    :func:`uri_rules` (the environment's, and the options of ``args`` when given); each Host handed
    to ``early`` as soon as its file is loaded."""
    return load_manifests(
        Path(path),
        ContentCache.default("manifests"),
        uri_rules=uri_rules(args),
        on_host=early.start if early is not None else None,
    )


def early_opens(args: argparse.Namespace) -> EarlyOpens:
    """Hosts opened while the manifests load (see ``adapters.libvirt.early``): those the command's
    ``--host`` and ``--selector`` pick, ``--host-parallel`` at most. Use it as a context manager
    around the whole pass."""
    from reconciler.adapters.libvirt.early import EarlyOpens

    names, chosen = set(args.host or ()), selector(args)

    def wanted(host: Host) -> bool:
        return (not names or host.name in names) and (not chosen or chosen.matches(host.metadata.labels))

    return EarlyOpens(wanted, limit=args.host_parallel)


def uri_rules(args: argparse.Namespace | None = None) -> UriRules:
    """What the operator lets Host URIs use beyond the defaults: ``$VIRT_RECONCILE_ALLOW_URI_PARAMS``
    and ``$VIRT_RECONCILE_ALLOW_URI_TRANSPORTS`` (comma- or space-separated), plus the command's
    ``--allow-uri-param`` and ``--allow-uri-transport``. Never anything a manifest says."""
    params = re.split(r"[,\s]+", os.environ.get(URI_PARAMS_ENV, ""))
    transports = re.split(r"[,\s]+", os.environ.get(URI_TRANSPORTS_ENV, ""))
    params += getattr(args, "allow_uri_param", None) or []
    transports += getattr(args, "allow_uri_transport", None) or []
    return UriRules.of(params, transports)


def selected_hosts(args: argparse.Namespace) -> tuple[str, ...] | None:
    """The ``--host`` selection, or None for every host."""
    return tuple(args.host) if args.host else None


def selector(args: argparse.Namespace) -> Selector:
    """The ``--selector`` requirements (none: every host)."""
    from reconciler.spec.labels import Selector

    return Selector.parse(getattr(args, "selector", None) or [])


def connector(early: EarlyOpens | None = None) -> Connector:
    """The libvirt adapter, imported only by the commands that talk to hosts. It opens a host
    without its apply lock: whoever writes takes it (``Hypervisor.exclusive``), in host order;
    with the connection ``early`` opened for it, if any."""
    from reconciler.adapters.libvirt import host as libvirt_host

    return lambda host, write: libvirt_host.open_host(host, write=write, early=early)


def ask_git(path: str) -> GitFacts:
    """Start asking git about the manifests at ``path`` (their folder, as :func:`load` takes it):
    git runs while the manifests load, and :func:`reconcile_options` takes the answers."""
    from reconciler.adapters.gitfacts import GitFacts

    root = Path(path)
    return GitFacts(root if root.is_dir() else root.parent)


def one_host(args: argparse.Namespace) -> tuple[ManifestSet, Host]:
    """The manifests and the one host named by ``--host`` (import, backup, restore)."""
    from reconciler.engine.reconcile import select_hosts

    manifests = load(args.path, args)
    [name] = select_hosts(manifests, [args.host])
    return manifests, manifests.hosts[name]


def reconcile_options(
    args: argparse.Namespace, manifests: ManifestSet, git: GitFacts | None = None, **extra: Any
) -> ReconcileOptions:
    """What ``plan`` and ``apply`` share of one pass: the host selection, the deletion flags, and the
    revision and manifest root recorded in ownership (a single file loaded records no root), from
    ``git`` when the command asked it early (:func:`ask_git`)."""
    from reconciler.engine.reconcile import ReconcileOptions

    git = git or ask_git(str(manifests.root))

    return ReconcileOptions(
        hosts=selected_hosts(args),
        selector=selector(args),
        host_parallel=args.host_parallel,
        allow_delete=args.allow_delete,
        allow_mass_delete=args.allow_mass_delete,
        revision=git.revision(),
        root=git.root_identity() if manifests.whole_tree else "",
        whole_tree=manifests.whole_tree,
        ignore_sync_windows=getattr(args, "ignore_sync_windows", False),  # apply's override only
        contained_revisions=git.contained_revisions,
        overwrite_newer=getattr(args, "overwrite_newer", False),
        **extra,
    )
