"""One module per command (``import``, ``backup`` and ``restore`` share ``adopt``), each with ``run``.

``reconciler.cli.main`` imports a module only when its command runs.
"""
