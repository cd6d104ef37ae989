"""The manifests of a revision, loaded in a thread of their own within a time budget.

A load that hangs (a pathological manifest) costs the loop its budget (``load_timeout``), not the
daemon: the loop gives up on it, reports the revision's error, and SIGTERM is honoured within a
fraction of a second meanwhile.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from reconciler.daemon.config import DaemonConfig
from reconciler.errors import ManifestTimeoutError
from reconciler.files.content_cache import ContentCache
from reconciler.spec.manifests import ManifestSet, load_manifests

STOP_CHECK_SECONDS = 0.1  # how often the loop looks at stop while a load runs


class ManifestLoader:
    """Loads the manifests in a thread of its own, so the loop can give up on a load that hangs.

    One load at a time: a load still running past its budget keeps its thread (a thread cannot be
    killed), and every later load is refused until it ends, so a revision that hangs the loader
    costs one thread, not one per pass.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None

    def load(
        self, root: Path, cache: ContentCache, config: DaemonConfig, stop: threading.Event
    ) -> ManifestSet | None:
        """The manifests below ``root``; None if ``stop`` was set meanwhile. Whatever the load
        raises is raised here; a load past ``config.load_timeout`` seconds is a
        ``ManifestTimeoutError``. Host URIs are held to the operator's ``config.uri_rules``."""
        budget = config.load_timeout
        if self._thread is not None and self._thread.is_alive():
            raise ManifestTimeoutError("an earlier load of the manifests is still running")
        done = threading.Event()
        result: list[ManifestSet] = []
        failure: list[Exception] = []

        def work() -> None:
            try:
                result.append(load_manifests(root, cache, uri_rules=config.uri_rules))
            except Exception as err:  # handed to the loop thread, which reports it
                failure.append(err)
            finally:
                done.set()

        self._thread = threading.Thread(target=work, name="load-manifests", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + budget
        while not done.wait(STOP_CHECK_SECONDS):
            if stop.is_set():
                return None
            if time.monotonic() >= deadline:
                raise ManifestTimeoutError(f"loading the manifests took longer than {budget:g}s")
        if failure:
            raise failure[0]
        if not result:
            raise ManifestTimeoutError("the load of the manifests ended without a result")
        return result[0]
