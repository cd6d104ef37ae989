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
import gc
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from reconciler.cli.exit_codes import EXIT_ERROR, EXIT_INTERRUPTED
from reconciler.cli.parser import COMMANDS, build_parser, command_named
from reconciler.errors import ManifestError, ReconcilerError

if TYPE_CHECKING:
    from reconciler.report import Printer

__all__ = ["build_parser", "handler", "main"]

Handler = Callable[[argparse.Namespace], int]

#: The collector's thresholds while a one-pass command runs. A plan of thousands of domains makes
#: models, parses and dicts that nearly all live to its end, and no cycles worth freeing: at the
#: default 700 allocations a young collection, the collector ran 450 times in a fleet's no-op plan
#: (4,000 domains), 0.1 s for nothing. Restored when the command returns.
ONE_PASS_GC_THRESHOLDS = (100_000, 50, 100)
#: Commands that run until stopped keep the default thresholds (their garbage must go in time).
LONG_RUNNING = frozenset({"daemon"})


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
    words = sys.argv[1:] if argv is None else list(argv)
    args = parse(build_parser(only=command_named(words)), words)
    thresholds = gc.get_threshold()
    if args.command not in LONG_RUNNING:
        gc.set_threshold(*ONE_PASS_GC_THRESHOLDS)
    try:
        return _load(args.command)(args)
    except ManifestError as problem:
        _print_manifest_error(problem)
        return EXIT_ERROR
    except (ReconcilerError, OSError) as failure:
        from reconciler.report import escape_markup as escape

        _stderr().print(f"[red]error:[/red] {escape(str(failure))}")
        return EXIT_ERROR
    except KeyboardInterrupt:  # Ctrl-C: the hosts' work in flight ended first, their locks let go
        _stderr().print("[red]interrupted[/red]: the next run plans from what it finds")
        return EXIT_INTERRUPTED
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def _load(command: str) -> Handler:
    """:func:`handler`, without the garbage collector's wasted passes over what its import creates.

    The modules a command loads (pydantic and the models, the engine, lxml) make tens of thousands
    of objects that live as long as the process; the collections their allocation sets off free
    nothing, yet walk them all, again and again (7 ms of ``validate``, 12 ms of ``plan``). So the
    collector is paused while the command's module loads, and what exists then is set aside from
    later collections (``gc.freeze``) until :func:`main` returns, when the collector has it back:
    a caller that runs many commands in one process (the tests) keeps nothing past its time.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        return handler(command)
    finally:
        gc.freeze()
        if collecting:
            gc.enable()


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
