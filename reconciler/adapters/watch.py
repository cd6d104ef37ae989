"""The only module that uses watchfiles: calls back when manifests in a plain directory change."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path


def watch_directory(path: Path, on_change: Callable[[], None], stop: threading.Event) -> threading.Thread:
    """Start a thread that calls ``on_change`` after each burst of changes below ``path``."""
    import watchfiles

    def manifest_file(_change: watchfiles.Change, name: str) -> bool:
        return name.endswith((".yaml", ".yml"))

    def run() -> None:
        for _changes in watchfiles.watch(
            path, watch_filter=manifest_file, stop_event=stop, debounce=100, step=50, rust_timeout=1000
        ):
            on_change()

    thread = threading.Thread(target=run, name="watch-manifests", daemon=True)
    thread.start()
    return thread
