"""The key that signs saved plans: where it lives, how it is made on first use, how it is read.

``plan --out`` signs a saved plan with an HMAC under this key and ``apply --plan`` refuses a plan
the same key did not sign, so a plan file edited between the two is never applied. The key is
32 random bytes in ``plan-signing.key`` in the reconciler's state folder
(``$VIRT_RECONCILE_STATE_DIR``, else systemd's ``$STATE_DIRECTORY``, else
``$XDG_STATE_HOME/virt-reconcile`` or ``~/.local/state/virt-reconcile``), made on first use: the
file 0600, a folder it creates 0700. ``$VIRT_RECONCILE_PLAN_KEY_FILE`` names a key file to use
instead, for plans made on one machine (CI) and applied on another; that file is never created.
A key file other users can read or change is refused: whoever can read it can sign any plan.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.errors import SavedPlanError
from reconciler.files.atomic import write_atomically
from reconciler.files.state import STATE_DIR_ENV, state_folder

KEY_FILE_ENV = "VIRT_RECONCILE_PLAN_KEY_FILE"
KEY_FILE_NAME = "plan-signing.key"
KEY_BYTES = 32


@dataclass(frozen=True)
class SigningKey:
    """A secret key and the file it came from (named in messages; the secret never is)."""

    path: Path
    secret: bytes = field(repr=False)

    @property
    def key_id(self) -> str:
        """A short public name of the key, so a plan signed by another key is told apart from an
        edited one. Derived through the HMAC, so it reveals nothing of the secret."""
        return hmac.new(self.secret, b"virt-reconcile plan key id", hashlib.sha256).hexdigest()[:16]

    def sign(self, data: bytes) -> str:
        """The HMAC-SHA256 of ``data``, in hex."""
        return hmac.new(self.secret, data, hashlib.sha256).hexdigest()

    def verifies(self, data: bytes, signature: str) -> bool:
        """Whether ``signature`` is this key's HMAC of ``data`` (compared in constant time)."""
        return hmac.compare_digest(self.sign(data).encode(), signature.encode("utf-8", "replace"))


def state_dir() -> Path:
    """The reconciler's state folder for this user or service (see :mod:`reconciler.files.state`)."""
    folder = state_folder()
    if folder is None:
        raise SavedPlanError(f"no folder for the plan signing key (no home directory): set {STATE_DIR_ENV}")
    return folder


def key_path() -> tuple[Path, bool]:
    """Where the plan signing key is, and whether it was named by ``$VIRT_RECONCILE_PLAN_KEY_FILE``."""
    shared = os.environ.get(KEY_FILE_ENV)
    if shared:
        return Path(shared), True
    return state_dir() / KEY_FILE_NAME, False


def signing_key() -> SigningKey:
    """The key ``plan --out`` signs with; made at the default place the first time it is needed."""
    path, shared = key_path()
    if not shared and not path.exists():
        _create(path)
    return _read(path, shared)


def verifying_key() -> SigningKey:
    """The key ``apply --plan`` checks signatures with; never made here (a new key verifies nothing)."""
    path, shared = key_path()
    return _read(path, shared)


def _create(path: Path) -> None:
    """Make a new random key at ``path``, unless another process makes one first (that one is kept).

    The key is written whole beside its final name, then hard-linked into place: a link never
    replaces an existing file, so two first uses at once agree on one key instead of one of them
    signing with a key the other has just overwritten.
    """
    folder = path.parent
    if not folder.is_dir():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)  # the mode given to mkdir is narrowed by the umask, never widened
    staged = folder / f".{path.name}.{secrets.token_hex(8)}.new"
    try:
        write_atomically(staged, secrets.token_bytes(KEY_BYTES), mode=0o600)
        with contextlib.suppress(FileExistsError):
            os.link(staged, path)
    except OSError as err:
        raise SavedPlanError(f"cannot create the plan signing key {path}: {err}") from err
    finally:
        with contextlib.suppress(OSError):
            staged.unlink()


def _read(path: Path, shared: bool) -> SigningKey:
    """Read a key file, refusing one that is missing, too short, or open to other users."""
    try:
        with path.open("rb") as handle:
            mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
            secret = handle.read()
    except FileNotFoundError as err:
        hint = (
            f"({KEY_FILE_ENV} names it)"
            if shared
            else f"(no plan was ever saved with this key; for a plan made elsewhere set {KEY_FILE_ENV} "
            "to the key it was signed with)"
        )
        raise SavedPlanError(f"no plan signing key at {path} {hint}") from err
    except OSError as err:
        raise SavedPlanError(f"cannot read the plan signing key {path}: {err}") from err
    if mode & 0o077:
        raise SavedPlanError(
            f"the plan signing key {path} is open to other users (mode {mode:04o}); whoever reads it can "
            f"sign any plan: make it private (chmod 600 {path})"
        )
    if len(secret) < KEY_BYTES:
        raise SavedPlanError(
            f"the plan signing key {path} holds {len(secret)} bytes; it needs at least {KEY_BYTES} "
            "random bytes"
        )
    return SigningKey(path, secret)
