"""The command line: argument parsing and wiring of the layers below, nothing else.

``main`` is the console script ``virt-reconcile`` and ``python -m reconciler``.
"""

from reconciler.cli.main import main

__all__ = ["main"]
