"""``init DIR``: a new manifests repository that validates and plans at once (``ops.scaffold``).

This module only turns the arguments into a :func:`~reconciler.ops.scaffold.scaffold` call and
prints what it did; what the repository holds and how it is written is in ``reconciler.ops.scaffold``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from reconciler.cli.exit_codes import EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Write the repository; a line per file; exit 1 (an error) for a non-empty DIR without --force."""
    from reconciler.ops.scaffold import scaffold

    root = Path(args.directory)
    done = scaffold(root, install_from=args.install_from, force=args.force)
    for path in done.written:
        print(f"wrote {root / path}")
    for path in done.kept:
        print(f"kept {root / path} (it was there already)")
    print(f"next: virt-reconcile validate {root} && virt-reconcile plan {root}")
    return EXIT_OK
