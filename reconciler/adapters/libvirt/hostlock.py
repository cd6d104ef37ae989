"""Per-host locks: one apply at a time per hypervisor, held from observation through the policy
check to the last action, so two runs never both pass the check and together overfill a host.

libvirt has no lock for clients, so the reconciler keeps its own, by where the hypervisor is:

* **this machine** (``HostURI.is_local``): ``flock`` on a file named from the canonical URI in
  ``/run/virt-reconcile/locks/`` (or ``$VIRT_RECONCILE_LOCK_DIR``), seen by every user of the
  hypervisor and released by the kernel when its process dies. Where /run cannot be written (not
  root), the state dir is used instead, with a warning for a system hypervisor.
* **elsewhere** (``qemu+ssh://``, ``qemu+tls://``, ``test+unix://`` ...): a lease held by the
  hypervisor itself, so runs on other machines see it: a libvirt object whose creation fails
  atomically while it exists, a secret with usage ``volume virt-reconcile-lock`` (real daemons) or
  an inactive network ``virt-reconcile-lock`` (the test driver has no secrets). It names its holder
  (machine, pid, since, last renewal), is renewed while held and removed on release; one not
  renewed for the stale limit belongs to a dead run and is broken, with a warning.

A second apply polls with backoff up to the wait limit (``$VIRT_RECONCILE_LOCK_WAIT`` seconds, 600)
and then observes afresh; past it, that host fails with a ``TemporaryHostError`` naming the holder.
Plans take no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import libvirt
from lxml import etree

from reconciler.errors import HostError, PermanentHostError, TemporaryHostError
from reconciler.files.state import state_folder
from reconciler.libvirtxml.xmltext import escaped
from reconciler.spec.hosturi import HostURI

log = logging.getLogger("virt_reconcile.adapters.hostlock")
Wire = AbstractContextManager[object]  # held around each call on a shared connection

#: The folder every user of a local hypervisor shares; tmpfs, so stale files vanish at boot.
RUN_LOCK_DIR = Path("/run/virt-reconcile/locks")
DIR_ENV = "VIRT_RECONCILE_LOCK_DIR"
WAIT_ENV = "VIRT_RECONCILE_LOCK_WAIT"
STALE_ENV = "VIRT_RECONCILE_LOCK_STALE"
#: The secret's usage id and the network's name: fixed, so a second lease cannot be created.
LEASE_NAME = "virt-reconcile-lock"
LEASE_NS = "https://virt-reconcile.dev/xmlns/lock/v1"
_PERMANENT_CODES = {
    libvirt.VIR_ERR_NO_SUPPORT,
    libvirt.VIR_ERR_ACCESS_DENIED,
    libvirt.VIR_ERR_OPERATION_DENIED,
}


@dataclass(frozen=True)
class LockLimits:
    """How long to wait for a lock, when a silent lease counts as dead, how often to renew one.

    ``stale`` measures silence, not age: the holder renews every ``renew`` seconds however long its
    apply takes, so no apply is ever too long for its lease. Five minutes is ten missed renewals
    (a slow libvirtd or a paused process survives it) and shorter than the wait, so the next apply
    breaks a dead run's lease instead of failing.
    """

    wait: float = 600.0
    stale: float = 300.0
    renew: float = 30.0
    poll: float = 0.1  # first pause between tries; doubles up to poll_max, with jitter
    poll_max: float = 5.0

    @classmethod
    def from_env(cls, host: str) -> LockLimits:
        """The defaults, with ``VIRT_RECONCILE_LOCK_WAIT`` and ``..._STALE`` (seconds) applied."""
        limits = cls()
        for env, field in ((WAIT_ENV, "wait"), (STALE_ENV, "stale")):
            text = os.environ.get(env)
            if not text:
                continue
            try:
                value = float(text)
            except ValueError:
                value = -1.0
            if value < 0:
                raise PermanentHostError(host, f"{env}={text!r} is not a number of seconds")
            limits = replace(limits, **{field: value})
        return replace(limits, renew=min(limits.renew, limits.stale / 4 or limits.renew))


@dataclass(frozen=True)
class Holder:
    """Who holds a lock: written into it by the holder, read back to name it to whoever waits."""

    hostname: str
    pid: int
    since: float
    renewed: float

    @classmethod
    def me(cls) -> Holder:
        """This process, now."""
        now = time.time()
        return cls(socket.gethostname(), os.getpid(), now, now)

    def text(self) -> str:
        """The machine-readable form stored in the lock file or the lease."""
        return (
            f"virt-reconcile apply: hostname={self.hostname} pid={self.pid} "
            f"since={_iso(self.since)} renewed={_iso(self.renewed)}"
        )

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        """A holder from :meth:`text`; None for anything else (an empty or foreign description)."""
        fields = dict(re.findall(r"(\w+)=(\S+)", text))
        try:
            return cls(
                fields["hostname"],
                int(fields["pid"]),
                datetime.fromisoformat(fields["since"]).timestamp(),
                datetime.fromisoformat(fields["renewed"]).timestamp(),
            )
        except (KeyError, ValueError):
            return None

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.hostname} since {_iso(self.since)}"


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="milliseconds")


def _describe(text: str) -> str:
    """A lock's recorded holder for a message: parsed when possible, raw (or unknown) otherwise."""
    holder = Holder.parse(text)
    if holder is not None:
        return str(holder)
    return repr(text.strip()) if text.strip() else "an unknown process"


@contextmanager
def host_lock(
    conn: libvirt.virConnect,
    uri: HostURI,
    host: str,
    limits: LockLimits | None = None,
    *,
    wire: Wire | None = None,
) -> Iterator[str]:
    """Hold ``host``'s lock (flock for a local hypervisor, a lease in it otherwise) for the block.

    Yields what is held, for logs. ``conn`` is only used for a lease; ``wire``, held around each
    call the lease's renewal and removal make on it, keeps them from overlapping other calls on
    ``conn`` (whoever shares the connection holds it around theirs).
    """
    limits = limits or LockLimits.from_env(host)
    if uri.is_local:
        with local_lock(uri, host, limits) as path:
            yield f"lock file {path}"
    else:
        with hypervisor_lease(conn, uri, host, limits, wire=wire) as what:
            yield what


def _wait(host: str, what: str, attempt: Callable[[], str | None], limits: LockLimits) -> None:
    """Call ``attempt`` until it takes the lock (returns None) or ``limits.wait`` runs out.

    While someone else holds it, ``attempt`` returns a description of the holder; the first one is
    logged, the last one goes into the error.
    """
    deadline = time.monotonic() + limits.wait
    pause = limits.poll
    holder = attempt()
    if holder is None:
        return
    log.warning("%s: waiting up to %gs for %s, held by %s", host, limits.wait, what, holder)
    while holder is not None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TemporaryHostError(
                host,
                f"another apply holds {what}: {holder}; gave up after waiting {limits.wait:g}s "
                f"({WAIT_ENV} sets the wait)",
            )
        time.sleep(min(pause * random.uniform(0.8, 1.2), remaining))  # jitter, not security
        pause = min(pause * 2, limits.poll_max)
        holder = attempt()


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
            return _describe(os.pread(fd, 4096, 0).decode(errors="replace"))
        return None

    try:
        _wait(host, f"the lock file {path}", attempt, limits)
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


# ---------------------------------------------------------------------------------------------
# Other hypervisors: a lease object in libvirt


@dataclass(frozen=True)
class Leases:
    """One kind of libvirt object used as a lease: creating it fails while it exists. A lease is
    found by its fixed name, renewed and removed by UUID, so never one created since by another run.
    """

    what: str
    xml: Callable[[str, str | None], str]  # (holder text, UUID or None for a new one) -> XML
    define: Callable[[str], Any]
    by_name: Callable[[], Any]
    by_uuid: Callable[[str], Any]
    text_at: str  # where the holder text is in the object's XML

    def create(self, text: str) -> str:
        """Create the lease recording ``text``; its UUID. Raises libvirtError when one exists."""
        return str(self.define(self.xml(text, None)).UUIDString())

    def current(self) -> tuple[str, str] | None:
        """The existing lease's UUID and recorded text, if there is one."""
        try:
            found = self.by_name()
            xml = found.XMLDesc(0)
        except libvirt.libvirtError as err:
            if _missing(err):
                return None
            raise
        return str(found.UUIDString()), etree.fromstring(xml.encode()).findtext(self.text_at) or ""

    def renew(self, uuid: str, text: str) -> None:
        """Rewrite lease ``uuid``'s text; raises libvirtError when it is gone (broken by another
        run: never recreated)."""
        self.by_uuid(uuid)
        self.define(self.xml(text, uuid))

    def remove(self, uuid: str) -> None:
        """Remove lease ``uuid`` if it still exists."""
        try:
            self.by_uuid(uuid).undefine()
        except libvirt.libvirtError as err:
            if not _missing(err):
                raise


def _missing(err: libvirt.libvirtError) -> bool:
    return err.get_error_code() in (libvirt.VIR_ERR_NO_SECRET, libvirt.VIR_ERR_NO_NETWORK)


def _secret_xml(text: str, uuid: str | None) -> str:
    """A private, persistent secret for usage ``volume virt-reconcile-lock``: libvirt refuses a
    second secret for a usage already taken, atomically under its secret list's lock."""
    return (
        f"<secret ephemeral='no' private='yes'>{f'<uuid>{uuid}</uuid>' if uuid else ''}<description>"
        f"{escaped(text)}</description><usage type='volume'><volume>{LEASE_NAME}</volume></usage></secret>"
    )


def _network_xml(text: str, uuid: str | None) -> str:
    """A network named ``virt-reconcile-lock``, defined and never started: libvirt refuses a second
    network of that name with another UUID. For the test driver, which has no secrets."""
    return (
        f"<network><name>{LEASE_NAME}</name>{f'<uuid>{uuid}</uuid>' if uuid else ''}<metadata>"
        f"<lock:holder xmlns:lock='{LEASE_NS}'>{escaped(text)}</lock:holder></metadata></network>"
    )


def lease_kind(conn: libvirt.virConnect, uri: HostURI) -> Leases:
    """The lease object for this host: by driver, never by probing, so every run on a host agrees."""
    if uri.driver == "test":
        return Leases(
            f"the libvirt network {LEASE_NAME!r}",
            _network_xml,
            conn.networkDefineXML,
            lambda: conn.networkLookupByName(LEASE_NAME),
            conn.networkLookupByUUIDString,
            f"metadata/{{{LEASE_NS}}}holder",
        )
    return Leases(
        f"the libvirt secret for usage {LEASE_NAME!r}",
        _secret_xml,
        conn.secretDefineXML,
        lambda: conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_VOLUME, LEASE_NAME),
        conn.secretLookupByUUIDString,
        "description",
    )


def _libvirt_failure(host: str, what: str, err: libvirt.libvirtError) -> HostError:
    message = f"{what}: {err.get_error_message() or err}"
    if err.get_error_code() in _PERMANENT_CODES:
        return PermanentHostError(host, message)
    return TemporaryHostError(host, message)


@contextmanager
def hypervisor_lease(
    conn: libvirt.virConnect, uri: HostURI, host: str, limits: LockLimits, *, wire: Wire | None = None
) -> Iterator[str]:
    """Hold the hypervisor's lease for the block, renewing it meanwhile; yields what is held.
    ``wire`` is held around each of the renewal's and the removal's calls (see ``host_lock``)."""
    leases = lease_kind(conn, uri)
    me = Holder.me()
    wire = wire or contextlib.nullcontext()
    try:
        with wire:
            uuid = _take_lease(leases, me, host, limits)
    except libvirt.libvirtError as err:
        raise _libvirt_failure(host, f"cannot take {leases.what}", err) from err
    renewer = _Renewer(leases, uuid, me, host, limits).start(wire)
    try:
        yield f"{leases.what} ({uuid})"
    finally:
        renewer.stop()
        try:
            with wire:
                leases.remove(uuid)
        except libvirt.libvirtError as err:
            log.warning("%s: could not remove %s (%s): %s", host, leases.what, uuid, err)


def _take_lease(leases: Leases, me: Holder, host: str, limits: LockLimits) -> str:
    """Create the lease, waiting while a live one exists and breaking a stale one; its UUID."""
    taken: list[str] = []

    def attempt() -> str | None:
        for _ in range(3):  # a lease released or broken between our create and our look: again
            try:
                taken.append(leases.create(me.text()))
                return None
            except libvirt.libvirtError as err:
                if err.get_error_code() in _PERMANENT_CODES:
                    raise
                failure = err
            found = leases.current()
            if found is None:
                continue
            uuid, text = found
            holder = Holder.parse(text)
            if holder is None or time.time() - holder.renewed <= limits.stale:
                return f"{_describe(text)} (lease {uuid})"
            log.warning(
                "%s: breaking %s (%s): %s has not renewed it for %.0fs (stale after %gs)",
                host, leases.what, uuid, holder, time.time() - holder.renewed, limits.stale,
            )  # fmt: skip
            leases.remove(uuid)
        raise failure

    _wait(host, leases.what, attempt, limits)
    return taken[0]


class _Renewer:
    """Renews a held lease every ``limits.renew`` seconds from a thread until stopped, so the lease
    stays fresh for as long as the apply runs."""

    def __init__(self, leases: Leases, uuid: str, holder: Holder, host: str, limits: LockLimits) -> None:
        self.leases, self.uuid, self.holder, self.host = leases, uuid, holder, host
        self.wire: AbstractContextManager[object] = contextlib.nullcontext()
        self.interval = limits.renew
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{host}", daemon=True)

    def start(self, wire: AbstractContextManager[object]) -> _Renewer:
        """Start renewing, each renewal holding ``wire`` (see ``host_lock``)."""
        self.wire = wire
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self.wire:
                    self.leases.renew(self.uuid, replace(self.holder, renewed=time.time()).text())
            except libvirt.libvirtError as err:
                log.warning("%s: could not renew %s (%s): %s", self.host, self.leases.what, self.uuid, err)

    def stop(self) -> None:
        """Stop renewing; returns after any renewal in flight, so none lands after the release."""
        self._stop.set()
        self._thread.join()
