"""Part of the libvirt adapter: cloud-init seeds uploaded into their pool, their digest recorded,
and graphics passwords read from their files when a definition is sent.

:class:`SeedActions` gives ``host.LibvirtHypervisor`` the Hypervisor protocol's seed methods:

- **upload**: the seed image becomes the whole content of the volume ``<domain>-cidata.iso`` through
  libvirt's upload stream (``virStorageVolUpload``), which works on a remote host as on this one.
  The volume is made first when its pool lacks it (at the size the plan says, which holds any
  seed), and made again when it is too small for the image; a larger one keeps its size, the rest
  of it written with zeros (nothing of an older seed is left behind). A volume already there is
  written only when it holds a seed (an ISO 9660 image labelled ``cidata``) or, no larger than a
  seed volume, nothing (zeros, as a seed whose upload failed): its head is read first
  (``virStorageVolDownload``), and anything else is refused, never overwritten, whatever the plan
  said. libvirt's test driver (a sandbox) has no upload or download: there the volume is made at
  the plan's size and holds no content, as every sandbox volume.
- **record**: the digest goes into the domain's ownership element with libvirt's metadata call, in
  the persistent definition only; nothing is redefined.

A graphics password is read from its ``passwordFile`` on this machine (the daemon runs on the host)
when a definition naming one is sent (:func:`with_file_passwords`): it never travels in a plan.
"""

from __future__ import annotations

import contextlib
import os
import stat

import libvirt

from reconciler.adapters.libvirt.errors import wrap as _wrap
from reconciler.adapters.libvirt.volumes import VolumeHost
from reconciler.engine.actions import VolumeChange
from reconciler.engine.seediso import LABEL
from reconciler.engine.seeds import SEED_VOLUME_BYTES
from reconciler.errors import DomainXMLError, PermanentHostError
from reconciler.libvirtxml.consoles import PASSWORD_FILE_MARK, password_file_of, with_graphics_password
from reconciler.libvirtxml.ownership import OWNER_NS, OWNER_PREFIX, owner_metadata, read_owner
from reconciler.libvirtxml.tree import domain_root
from reconciler.libvirtxml.volumes import render_volume
from reconciler.spec.sizes import format_size

_CHUNK = 256 * 1024  # bytes per stream send
#: Where an ISO 9660 image keeps its primary volume descriptor (sector 16), and the bytes read to see it.
_DESCRIPTOR = 16 * 2048
_HEAD = _DESCRIPTOR + 2048
#: The longest password read: VNC uses 8 characters (its DES challenge), SPICE more.
_MAX_PASSWORD = {"vnc": 8, "spice": 256}


class SeedActions:
    """The Hypervisor protocol's seed methods, for ``LibvirtHypervisor`` to inherit."""

    def upload_volume(self: VolumeHost, volume: VolumeChange, image: bytes) -> str:
        """Write ``image`` as a volume's whole content (see the module's docstring)."""
        with self._borrowed():
            return upload_volume(self, volume, image)

    def record_seed(self: VolumeHost, name: str, digest: str) -> None:
        """Record a seed's digest in a domain's ownership metadata (persistent definition only)."""
        with self._borrowed():
            record_seed(self, name, digest)


def upload_volume(host: VolumeHost, volume: VolumeChange, image: bytes) -> str:
    """Make the volume as large as ``image`` when needed, then upload ``image`` into it."""
    where = f"{volume.pool}/{volume.name}"
    what = f"upload seed {where}"
    pool = host._call(f"storage pool {volume.pool!r}", host._conn().storagePoolLookupByName, volume.pool)
    found = _find(host, pool, volume.name, what)
    capacity = int(host._call(what, found.info)[1]) if found is not None else 0
    if found is not None and not host._is_test_driver:
        _refuse_unless_seed(host, found, capacity, what)
    host.changed = True
    if found is not None and capacity < len(image):
        host._call(what, found.delete, 0)
        found = None
    made = found is None
    if found is None:
        capacity = max(volume.capacity, len(image))
        found = host._call(what, pool.createXML, render_volume(volume.name, capacity, "raw"), 0)
    if host._is_test_driver:
        done = "made" if made else "kept"
        return f"volume {where} {done}, {format_size(capacity)} (the test driver keeps no content)"
    _send(host, found, image + bytes(capacity - len(image)), what)
    return f"seed uploaded to {where} ({len(image)} bytes)"


def _find(
    host: VolumeHost, pool: libvirt.virStoragePool, name: str, what: str
) -> libvirt.virStorageVol | None:
    try:
        return host._raw(pool.storageVolLookupByName, name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return None
        raise _wrap(host.name, what, err) from err


def _refuse_unless_seed(host: VolumeHost, found: libvirt.virStorageVol, capacity: int, what: str) -> None:
    """PermanentHostError unless the volume holds a cloud-init seed (an ISO 9660 primary volume
    descriptor labelled ``cidata``), or is no larger than a seed volume and holds nothing where one
    would be (zeros: a seed whose upload failed): anything else may be another's data."""
    head = _receive(host, found, min(capacity, _HEAD), what)
    descriptor = head[_DESCRIPTOR:_HEAD]
    is_seed = descriptor[:7] == b"\x01CD001\x01" and descriptor[40:72].rstrip(b" ") == LABEL.encode()
    if is_seed or (capacity <= SEED_VOLUME_BYTES and not head.strip(b"\x00")):
        return
    raise PermanentHostError(
        host.name,
        f"{what}: the volume is there and holds something other than a cloud-init seed: it may be "
        "another's data and is not overwritten; rename or delete it",
    )


def _receive(host: VolumeHost, found: libvirt.virStorageVol, length: int, what: str) -> bytes:
    """The first ``length`` bytes of a volume, through libvirt's download stream."""
    stream = host._call(what, host._conn().newStream, 0)
    received = bytearray()
    try:
        host._call(what, found.download, stream, 0, length, 0)
        while len(received) < length:
            chunk = host._call(what, stream.recv, length - len(received))
            if not isinstance(chunk, bytes) or not chunk:
                break
            received += chunk
        host._call(what, stream.finish)
    except BaseException:
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
        raise
    return bytes(received)


def _send(host: VolumeHost, found: libvirt.virStorageVol, content: bytes, what: str) -> None:
    """Stream ``content`` into the volume from its start; the stream is aborted on any failure."""
    stream = host._call(what, host._conn().newStream, 0)
    try:
        host._call(what, found.upload, stream, 0, len(content), 0)
        view = memoryview(content)
        offset = 0
        while offset < len(content):
            sent = host._call(what, stream.send, bytes(view[offset : offset + _CHUNK]))
            if sent <= 0:
                raise PermanentHostError(host.name, f"{what}: the stream took no data")
            offset += sent
        host._call(what, stream.finish)
    except BaseException:
        with contextlib.suppress(libvirt.libvirtError):  # finished or broken: the error raised says why
            stream.abort()
        raise


def record_seed(host: VolumeHost, name: str, digest: str) -> None:
    """Set ``seed`` in a domain's ownership element (read from its persistent definition now, so
    whatever this apply wrote there before is kept)."""
    what = f"record the seed of {name!r}"
    dom = host._call(f"domain {name!r}", host._conn().lookupByName, name)
    xml = host._call(what, dom.XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE)
    try:
        owner = read_owner(domain_root(xml).find("metadata"))
    except DomainXMLError as err:
        raise PermanentHostError(host.name, f"{what}: {err}") from err
    if owner is None:
        raise PermanentHostError(host.name, f"{what}: the domain carries no ownership metadata")
    if owner.seed == digest:
        return
    host.changed = True
    metadata = owner_metadata(owner.model_copy(update={"seed": digest}))
    element = libvirt.VIR_DOMAIN_METADATA_ELEMENT
    flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
    host._call(what, dom.setMetadata, element, metadata, OWNER_PREFIX, OWNER_NS, flags)


def with_file_passwords(host: str, xml: str) -> str:
    """``xml`` with the password of its graphics read from the ``passwordFile`` its ownership
    names (on this machine), or unchanged when it names none."""
    if PASSWORD_FILE_MARK not in xml:
        return xml  # the common case, decided without parsing
    try:
        wanted = password_file_of(xml)
    except DomainXMLError:
        return xml  # not domain XML: libvirt refuses it and says why
    if wanted is None:
        return xml
    kind, path = wanted
    return with_graphics_password(xml, read_password(host, path, kind))


def read_password(host: str, path: str, kind: str) -> str:
    """The password in ``path``: its first line, at most as long as ``kind`` (vnc, spice) allows;
    PermanentHostError naming the file when it cannot be used."""

    def refuse(why: str) -> PermanentHostError:
        return PermanentHostError(host, f"graphics passwordFile {path}: {why}")

    limit = _MAX_PASSWORD.get(kind, 256)
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(handle).st_mode):
                raise refuse("not a regular file")
            content = os.read(handle, 4096)
        finally:
            os.close(handle)
    except OSError as err:
        raise refuse(f"cannot be read on this machine: {err.strerror or err}") from None
    try:
        password = content.decode("utf-8").removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError:
        raise refuse("not UTF-8 text") from None
    if not password:
        raise refuse("empty")
    if any(ord(character) < 32 or ord(character) == 127 for character in password):
        raise refuse("holds a control character (or more than one line)")
    if len(password) > limit:
        raise refuse(f"longer than the {limit} characters a {kind} password can be")
    return password
