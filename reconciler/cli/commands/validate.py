"""``validate``: parse and check the manifests, touching no host."""

from __future__ import annotations

import argparse
import sys

from reconciler.cli.exit_codes import EXIT_OK
from reconciler.cli.inputs import load
from reconciler.report import Printer
from reconciler.report import escape_markup as escape


def run(args: argparse.Namespace) -> int:
    """Exit 0 when the manifests are valid (invalid ones raise ManifestError: exit 1)."""
    manifests = load(args.path, args)
    domains = sum(len(d) for d in manifests.domains.values())
    Printer(sys.stdout).print(
        f"valid: {len(manifests.hosts)} host(s), {domains} domain(s) in {escape(str(args.path))}"
    )
    return EXIT_OK
