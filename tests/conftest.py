"""Settings every test tier shares."""

from pathlib import Path

import pytest

#: Fixtures several tiers share (the local notification receivers).
pytest_plugins = ["tests.notify_helpers"]


@pytest.fixture(autouse=True)
def private_cache_folder(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test (and the CLIs and daemons it starts) caches parse results in its own folder."""
    folder = tmp_path_factory.mktemp("manifest-cache")
    monkeypatch.setenv("VIRT_RECONCILE_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(autouse=True)
def private_state_folder(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test keeps its state (the plan signing key) in its own folder, never the user's home."""
    folder = tmp_path_factory.mktemp("state") / "virt-reconcile"
    monkeypatch.setenv("VIRT_RECONCILE_STATE_DIR", str(folder))
    monkeypatch.delenv("VIRT_RECONCILE_PLAN_KEY_FILE", raising=False)
    return folder
