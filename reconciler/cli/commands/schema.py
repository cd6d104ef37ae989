"""``schema``: the manifests' JSON Schemas, for editors."""

from __future__ import annotations

import argparse
from pathlib import Path

from reconciler.cli.exit_codes import EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Write the schemas into ``--out``; a line per file."""
    from reconciler.ops.schema import write_schemas

    for path in write_schemas(Path(args.out)):
        print(f"wrote {path}")
    return EXIT_OK
