"""The command line: argument parsing and wiring of the layers below, nothing else."""

from reconciler.cli.main import main

__all__ = ["main"]
