"""Per-host locks: one apply at a time per hypervisor, held from observation through the policy
check to the last action, so two runs never both pass the check and together overfill a host.

libvirt has no lock for clients, so the reconciler keeps its own, by where the hypervisor is:

* **this machine** (``HostURI.is_local``): ``flock`` on a file named from the canonical URI in
  ``/run/virt-reconcile/locks/`` (or ``$VIRT_RECONCILE_LOCK_DIR``), seen by every user of the
  hypervisor and released by the kernel when its process dies. Where /run cannot be written (not
  root), the state dir is used instead, with a warning for a system hypervisor.
* **elsewhere** (``qemu+ssh://``, ``qemu+tls://``, ``test+unix://`` ...): a lease held by the
  hypervisor itself, so runs on other machines see it (``leases``).

Both record their holder (``lockholders``: machine, pid, since, last renewal).

A second apply polls with backoff up to the wait limit (``$VIRT_RECONCILE_LOCK_WAIT`` seconds, 600)
and then observes afresh; past it, that host fails with a ``TemporaryHostError`` naming the holder.
Plans take no lock.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import libvirt

from reconciler.adapters.libvirt.leases import Wire, hypervisor_lease
from reconciler.adapters.libvirt.lockholders import Holder, LockLimits, describe, log, wait_for
from reconciler.errors import PermanentHostError
from reconciler.files.state import state_folder
from reconciler.spec.hosturi import HostURI

#: The folder every user of a local hypervisor shares; tmpfs, so stale files vanish at boot.
RUN_LOCK_DIR = Path("/run/virt-reconcile/locks")
DIR_ENV = "VIRT_RECONCILE_LOCK_DIR"


@contextmanager
def host_lock(
    conn: libvirt.virConnect,
    uri: HostURI,
    host: str,
    limits: LockLimits | None = None,
    *,
    wire: Wire | None = None,
    wait: bool = True,
) -> Iterator[str]:
    """Hold ``host``'s lock (flock for a local hypervisor, a lease in it otherwise) for the block;
    while another run holds it, wait up to the wait limit, or not at all (``wait=False``).

    Yields what is held, for logs. ``conn`` is only used for a lease; ``wire``, held around each
    call the lease's renewal and removal make on it, keeps them from overlapping other calls on
    ``conn`` (whoever shares the connection holds it around theirs).
    """
    limits = limits or LockLimits.from_env(host)
    if not wait:
        limits = replace(limits, wait=0)
    if uri.is_local:
        with local_lock(uri, host, limits) as path:
            yield f"lock file {path}"
    else:
        with hypervisor_lease(conn, uri, host, limits, wire=wire) as what:
            yield what


# ---------------------------------------------------------------------------------------------
# Local hypervisors (and sandbox state files): flock


def canonical_uri(uri: HostURI) -> str:
    """One spelling per local hypervisor: transport and ``localhost`` dropped, only ``socket`` kept
    of the query (it picks the daemon), so ``qemu+unix://localhost/system`` is ``qemu:///system``."""
    parts = urlsplit(uri.text)
    path = "/" + parts.path.strip("/")
    sockets = parse_qs(parts.query).get("socket")
    return f"{uri.driver}://{path}" + (f"?socket={sockets[0]}" if sockets else "")


def lock_file_name(uri: HostURI) -> str:
    """The lock file's name: the canonical URI made safe, and the user's id for a session
    hypervisor (each user has their own ``/session`` daemon)."""
    canonical = canonical_uri(uri)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", canonical).strip("_")
    if urlsplit(canonical).path == "/session":
        name += f"-uid{os.getuid()}"
    return name + ".lock"


@contextmanager
def local_lock(uri: HostURI, host: str, limits: LockLimits) -> Iterator[Path]:
    """Hold the flock of a hypervisor on this machine; yields the lock file's path."""
    fd, path = _open_local_lock_file(uri, host)
    with _flock_held(fd, path, host, limits):
        yield path


def _open_local_lock_file(uri: HostURI, host: str) -> tuple[int, Path]:
    """Open the lock file in the first usable folder: the override, else /run, else the state dir."""
    name = lock_file_name(uri)
    explicit = os.environ.get(DIR_ENV)
    own = state_folder()
    folders = [(RUN_LOCK_DIR, 0o755)] + ([(own / "locks", 0o700)] if own else [])
    if explicit:
        folders = [(Path(explicit), 0o755)]
    failures = []
    for folder, mode in folders:
        try:
            fd = _open_lock_file(folder / name, mode)
        except OSError as err:
            failures.append(f"{folder}: {err.strerror or err}")
            continue
        if failures and not name.endswith(f"-uid{os.getuid()}.lock"):  # a session is one user's
            log.warning(
                "%s: cannot lock in %s; locking in %s instead, which keeps out only this user's runs on "
                "%s (run as root, or set %s to a folder every user of it can write)",
                *(host, failures[0], folder, canonical_uri(uri), DIR_ENV),
            )
        return fd, folder / name
    raise PermanentHostError(host, f"cannot create a lock file: {'; '.join(failures)}")


@contextmanager
def file_lock(path: Path, host: str, limits: LockLimits) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if missing, with its folder) for the block."""
    try:
        fd = _open_lock_file(path, None)
    except OSError as err:
        raise PermanentHostError(host, f"cannot open the lock file {path}: {err.strerror or err}") from err
    with _flock_held(fd, path, host, limits):
        yield


def _open_lock_file(path: Path, folder_mode: int | None) -> int:
    """Open (creating) a lock file, read-write for recording the holder, or read-only when the
    file belongs to another user: flock needs no write access."""
    if folder_mode is None:
        path.parent.mkdir(parents=True, exist_ok=True)
    else:
        path.parent.mkdir(mode=folder_mode, parents=True, exist_ok=True)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except PermissionError:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


@contextmanager
def _flock_held(fd: int, path: Path, host: str, limits: LockLimits) -> Iterator[None]:
    """Wait for the flock on ``fd``, record this process in the file, and clear it on release;
    closing ``fd`` releases the lock (as the kernel does when the process dies)."""

    def attempt() -> str | None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return describe(os.pread(fd, 4096, 0).decode(errors="replace"))
        return None

    try:
        wait_for(host, f"the lock file {path}", attempt, limits)
        writable = _record(fd, Holder.me().text() + "\n")
        try:
            yield
        finally:
            if writable:
                _record(fd, "")
    finally:
        os.close(fd)


def _record(fd: int, text: str) -> bool:
    """Replace the lock file's content; False when the file is open read-only (another user's)."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
    except OSError:
        return False
    return True
