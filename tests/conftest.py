"""Settings every test tier shares."""

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def private_cache_folder(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test (and the CLIs and daemons it starts) caches parse results in its own folder."""
    folder = tmp_path_factory.mktemp("manifest-cache")
    monkeypatch.setenv("VIRT_RECONCILE_CACHE_DIR", str(folder))
    return folder
