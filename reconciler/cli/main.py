"""The entry point: parse the command line, run the command's module, turn errors into exit codes.

Each command lives in its own module under ``reconciler.cli.commands`` and is imported only when
it runs, so ``validate`` never pays for the daemon, GitPython or prometheus-client. Which module
runs which command is in the one command table, :data:`reconciler.cli.parser.COMMANDS`.

Errors: a ``ReconcilerError`` or an ``OSError`` (a file that cannot be read or written) is the
user's to fix: ``error: ...`` and exit 1. A wrong option value is argparse's usage error (exit 2).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from reconciler.cli.exit_codes import EXIT_ERROR
from reconciler.cli.parser import COMMANDS, build_parser
from reconciler.errors import ManifestError, ReconcilerError

if TYPE_CHECKING:
    from reconciler.report import Printer

__all__ = ["build_parser", "handler", "main"]

Handler = Callable[[argparse.Namespace], int]


def handler(command: str) -> Handler:
    """The function that runs ``command``, its module imported now."""
    [target] = [c.handler for c in COMMANDS if c.name == command]
    module, function = target.split(":")
    run: Handler = getattr(importlib.import_module(f"reconciler.cli.commands.{module}"), function)
    return run


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; DOMAIN names may follow the options, as in ``import PATH --host H --out DIR web``."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse hands positionals after options back as unknown; anything else is an error.
        if getattr(args, "domains", None) is None or any(item.startswith("-") for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.domains = [*args.domains, *extra]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code."""
    args = parse(build_parser(), argv)
    try:
        return handler(args.command)(args)
    except ManifestError as problem:
        _print_manifest_error(problem)
        return EXIT_ERROR
    except (ReconcilerError, OSError) as failure:
        from reconciler.report import escape_markup as escape

        _stderr().print(f"[red]error:[/red] {escape(str(failure))}")
        return EXIT_ERROR


def _stderr() -> Printer:
    from reconciler.report import Printer

    return Printer(sys.stderr)


def _print_manifest_error(problem: ManifestError) -> None:
    from reconciler.report import escape_markup as escape

    err = _stderr()
    count = len(problem.problems)
    plural = "s" * (count != 1)
    err.print(f"[red]error:[/red] the manifests are invalid ({count} problem{plural}); nothing was applied")
    for item in problem.problems:
        err.print(f"  {escape(str(item))}")
