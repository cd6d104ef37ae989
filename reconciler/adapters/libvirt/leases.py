"""Locks of hypervisors elsewhere (``qemu+ssh://``, ``qemu+tls://``, ``test+unix://`` ...): a lease
held by the hypervisor itself, so runs on other machines see it. It is a libvirt object whose creation
fails atomically while it exists: a secret with usage ``volume virt-reconcile-lock`` (real daemons)
or an inactive network ``virt-reconcile-lock`` (the test driver has no secrets). It names its holder,
is renewed while held and removed on release; one not renewed for the stale limit, or whose holder's
process has ended on this machine, belongs to a dead run and is broken, with a warning.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from typing import Any

import libvirt
from lxml import etree

from reconciler.adapters.libvirt.lockholders import Holder, LockLimits, describe, log, wait_for
from reconciler.errors import HostError, PermanentHostError, TemporaryHostError
from reconciler.libvirtxml.xmltext import escaped
from reconciler.spec.hosturi import HostURI

Wire = AbstractContextManager[object]  # held around each call on a shared connection
#: The secret's usage id and the network's name: fixed, so a second lease cannot be created.
LEASE_NAME = "virt-reconcile-lock"
LEASE_NS = "https://virt-reconcile.dev/xmlns/lock/v1"
_PERMANENT_CODES = {
    libvirt.VIR_ERR_NO_SUPPORT,
    libvirt.VIR_ERR_ACCESS_DENIED,
    libvirt.VIR_ERR_OPERATION_DENIED,
}


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
    with _HELD_LOCK:
        _HELD_LEASES[uuid] = threading.get_ident()
    try:
        yield f"{leases.what} ({uuid})"
    finally:
        renewer.stop()
        with _HELD_LOCK:
            _HELD_LEASES.pop(uuid, None)
        try:
            with wire:
                leases.remove(uuid)
        except libvirt.libvirtError as err:
            with _HELD_LOCK:
                _LEFT_BEHIND.add(uuid)  # this process breaks it at once when it meets it again
            log.warning("%s: could not remove %s (%s): %s", host, leases.what, uuid, err)


def _take_lease(leases: Leases, me: Holder, host: str, limits: LockLimits) -> str:
    """Create the lease, waiting while a live one exists and breaking a stale one, or one whose
    holder's process has ended on this machine; its UUID. A lease this process holds already (the
    same hypervisor reached through another Host entry) is an error at once, never waited for."""
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
            try:
                found = leases.current()
            except libvirt.libvirtError:
                raise failure from None  # the connection failed: the create's error says how
            if found is None:
                continue
            uuid, text = found
            _refuse_own(leases, uuid, host)
            holder = Holder.parse(text)
            if _left_behind(uuid):
                why = "this process could not remove it when it let it go"
            elif holder is not None and holder.ended():
                why = f"{holder} has ended without removing it"
            elif holder is None or time.time() - holder.renewed <= limits.stale:
                return f"{describe(text)} (lease {uuid})"
            else:
                since = time.time() - holder.renewed
                why = f"{holder} has not renewed it for {since:.0f}s (stale after {limits.stale:g}s)"
            log.warning("%s: breaking %s (%s): %s", host, leases.what, uuid, why)
            leases.remove(uuid)
        raise failure

    wait_for(host, leases.what, attempt, limits)
    return taken[0]


#: The leases this process let go but could not remove (their host did not answer): nobody holds them.
_LEFT_BEHIND: set[str] = set()
#: The leases this process holds now: UUID -> the thread that took it. A run takes every host's
#: lock it waits for in one thread, in order, so one found again by that thread is its own.
_HELD_LEASES: dict[str, int] = {}
_HELD_LOCK = threading.Lock()


def _left_behind(uuid: str) -> bool:
    """Whether lease ``uuid`` is one this process let go but could not remove (a daemon's next pass
    on that host would otherwise wait for the stale limit); it is forgotten once met again."""
    with _HELD_LOCK:
        if uuid not in _LEFT_BEHIND:
            return False
        _LEFT_BEHIND.discard(uuid)
        return True


def _refuse_own(leases: Leases, uuid: str, host: str) -> None:
    """Fail at once when the lease found is one this thread took for its run: waiting for it would
    wait for the run itself (two Host entries reaching one hypervisor by different URIs, a name and
    an address). Another thread's lease (another host lane of the daemon) is waited for as any."""
    with _HELD_LOCK:
        own = _HELD_LEASES.get(uuid) == threading.get_ident()
    if own:
        raise PermanentHostError(
            host,
            f"{leases.what} ({uuid}) is held by this run already, for another Host entry: two Host "
            "entries reach the same hypervisor (give each hypervisor one Host entry)",
        )


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
