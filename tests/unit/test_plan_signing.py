"""The plan signing key (where it lives, how it is made and read) and saved plan signatures."""

from __future__ import annotations

import json
import secrets
import stat
from pathlib import Path

import pytest

from reconciler.errors import SavedPlanError
from reconciler.files import keys
from reconciler.files.atomic import write_atomically
from reconciler.files.keys import (
    KEY_FILE_ENV,
    STATE_DIR_ENV,
    SigningKey,
    key_path,
    signing_key,
    verifying_key,
)
from reconciler.offline.savedplan import canonical, load_plan, signature, verify_signature


@pytest.fixture
def bare_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No variable that chooses the state folder, and a home of our own."""
    for name in (STATE_DIR_ENV, KEY_FILE_ENV, "STATE_DIRECTORY", "XDG_STATE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def test_the_state_folder_is_chosen_in_order(bare_env: pytest.MonkeyPatch, tmp_path: Path):
    assert key_path() == (
        tmp_path / "home" / ".local" / "state" / "virt-reconcile" / "plan-signing.key",
        False,
    )
    bare_env.setenv("XDG_STATE_HOME", "relative/state")  # ignored, as the XDG spec says
    assert key_path()[0].parent == tmp_path / "home" / ".local" / "state" / "virt-reconcile"
    bare_env.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert key_path()[0].parent == tmp_path / "xdg" / "virt-reconcile"
    bare_env.setenv("STATE_DIRECTORY", f"{tmp_path / 'unit'}:{tmp_path / 'second'}")  # systemd's list
    assert key_path()[0].parent == tmp_path / "unit"
    bare_env.setenv(STATE_DIR_ENV, str(tmp_path / "explicit"))
    assert key_path() == (tmp_path / "explicit" / "plan-signing.key", False)
    bare_env.setenv(KEY_FILE_ENV, str(tmp_path / "shared.key"))
    assert key_path() == (tmp_path / "shared.key", True)


def test_a_key_is_made_once_private_and_never_replaced(bare_env: pytest.MonkeyPatch, tmp_path: Path):
    folder = tmp_path / "state" / "deep"
    bare_env.setenv(STATE_DIR_ENV, str(folder))
    with pytest.raises(SavedPlanError, match="no plan signing key"):
        verifying_key()  # verifying never makes a key: a new one could verify nothing
    assert not folder.exists()
    made = signing_key()
    assert made.path == folder / "plan-signing.key" and len(made.secret) == 32
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(made.path.stat().st_mode) == 0o600
    keys._create(made.path)  # a second first use (another process) keeps the key already there
    assert signing_key() == verifying_key() == made
    assert sorted(p.name for p in folder.iterdir()) == ["plan-signing.key"]
    assert repr(made.secret) not in repr(made), "the secret never shows in messages or logs"


def test_a_shared_key_file_is_never_made(bare_env: pytest.MonkeyPatch, tmp_path: Path):
    bare_env.setenv(KEY_FILE_ENV, str(tmp_path / "ci.key"))
    with pytest.raises(SavedPlanError, match=KEY_FILE_ENV):
        signing_key()
    assert not (tmp_path / "ci.key").exists()


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [
        (b"k" * 32, 0o640, "open to other users"),
        (b"k" * 32, 0o604, "chmod 600"),
        (b"short", 0o600, "holds 5 bytes"),
    ],
)
def test_a_key_others_can_read_or_too_short_is_refused(
    bare_env: pytest.MonkeyPatch, tmp_path: Path, content: bytes, mode: int, message: str
):
    key_file = tmp_path / "ci.key"
    write_atomically(key_file, content, mode=mode)
    bare_env.setenv(KEY_FILE_ENV, str(key_file))
    with pytest.raises(SavedPlanError, match=message):
        verifying_key()


def test_a_signature_covers_every_byte_but_not_the_layout(tmp_path: Path):
    key = SigningKey(tmp_path / "k", secrets.token_bytes(32))
    document = {"kind": "virt-reconcile/saved-plan", "hosts": {"hv1": {"actions": [{"xml": "<a/>"}]}}}
    document["signature"] = signature(document, key)
    relaid = json.loads(json.dumps(document, indent=5, sort_keys=True))
    verify_signature(relaid, key, tmp_path / "plan.json")
    relaid["hosts"]["hv1"]["actions"][0]["xml"] = "<b/>"
    with pytest.raises(SavedPlanError, match=r"plan\.json: the saved plan does not match its signature"):
        verify_signature(relaid, key, tmp_path / "plan.json")
    other = SigningKey(tmp_path / "other", secrets.token_bytes(32))
    with pytest.raises(SavedPlanError, match="signed with another key"):
        verify_signature(document, other, tmp_path / "plan.json")
    assert canonical(document) == canonical({k: v for k, v in document.items() if k != "signature"})
    assert not key.verifies(b"x", "\u00e9" * 64), "a non-ASCII signature is refused, not an error"


def test_a_plan_file_with_nan_or_another_kind_is_not_a_saved_plan(tmp_path: Path):
    key = SigningKey(tmp_path / "k", secrets.token_bytes(32))
    path = tmp_path / "plan.json"
    path.write_text('{"kind": "virt-reconcile/saved-plan", "hosts": {}, "x": NaN}')
    with pytest.raises(SavedPlanError, match="not a saved virt-reconcile plan"):
        load_plan(path, lambda: key)
    path.write_text("[]")
    with pytest.raises(SavedPlanError, match="not a saved virt-reconcile plan"):
        load_plan(path, lambda: key)
