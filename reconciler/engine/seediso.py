"""A cloud-init NoCloud seed as an ISO 9660 image, built in Python (pycdlib, no external tool; pure).

The image is what ``genisoimage -volid cidata -joliet -rock`` makes: volume label ``cidata``, the
files ``user-data``, ``meta-data`` and (when given) ``network-config`` in its root, named by Rock
Ridge (Linux) and Joliet (Windows) alike. It is deterministic: the same files give the same bytes,
whenever and wherever it is built, because every timestamp in it is fixed (pycdlib stamps the
current local time; :func:`_fixed_dates` and :func:`_fixed_modification_dates` undo that).
"""

from __future__ import annotations

import io
import struct
from typing import TYPE_CHECKING, Any

from reconciler.spec.cloudinit import Seed

if TYPE_CHECKING:
    import pycdlib

#: The volume label cloud-init's NoCloud datasource looks for.
LABEL = "cidata"
#: The time every date in a seed image says: 2000-01-01 00:00:00 UTC.
_EPOCH_FIELDS = (100, 1, 1, 0, 0, 0, 0)  # a directory record's: years since 1900, month, day, h, m, s, tz
_EPOCH_TEXT = b"2000010100000000" + struct.pack("=b", 0)  # a volume descriptor's: digits, then tz
_SECTOR = 2048
_FIRST_DESCRIPTOR = 16  # volume descriptors start at sector 16, end with a terminator (type 255)
_MODIFICATION_DATE = slice(830, 847)  # where a primary or supplementary descriptor keeps it


def iso_name(name: str) -> str:
    """A seed file's plain ISO 9660 name (8.3 capitals, as level 1 wants): ``/USERDATA.;1``."""
    return "/" + name.replace("-", "").upper()[:8] + ".;1"


def build_seed_iso(seed: Seed) -> bytes:
    """The seed's ISO image (bytes), the same for the same files."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1, vol_ident=LABEL, joliet=3, rock_ridge="1.09")
    for name, content in seed.files:
        iso.add_fp(io.BytesIO(content), len(content), iso_name(name), rr_name=name, joliet_path="/" + name)
    _fixed_dates(iso, set())
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return _fixed_modification_dates(bytearray(out.getvalue()))


def _fixed_dates(node: Any, seen: set[int]) -> None:
    """Set every date pycdlib keeps in its records (directory records, Rock Ridge times, volume
    creation dates) to the fixed epoch, walking its object graph."""
    from pycdlib import dates

    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, dates.DirectoryRecordDate):
        if node._initialized:
            (
                node.years_since_1900,
                node.month,
                node.day_of_month,
                node.hour,
                node.minute,
                node.second,
                node.gmtoffset,
            ) = _EPOCH_FIELDS
    elif isinstance(node, dates.VolumeDescriptorDate):
        if node._initialized and node.date_str != node.EMPTY_STRING:
            node.year, node.month, node.dayofmonth = 2000, 1, 1
            node.hour = node.minute = node.second = node.hundredthsofsecond = node.gmtoffset = 0
            node.date_str = _EPOCH_TEXT
    elif isinstance(node, list | tuple):
        for item in node:
            _fixed_dates(item, seen)
    elif isinstance(node, dict):
        for item in node.values():
            _fixed_dates(item, seen)
    elif type(node).__module__.startswith("pycdlib"):
        for attribute in _attributes(node):
            _fixed_dates(getattr(node, attribute, None), seen)


def _attributes(node: Any) -> set[str]:
    """The attribute names of a pycdlib object (its classes use ``__slots__``)."""
    names: set[str] = set(getattr(node, "__dict__", {}))
    for cls in type(node).__mro__:
        slots = getattr(cls, "__slots__", ())
        names.update((slots,) if isinstance(slots, str) else slots)
    return names


def _fixed_modification_dates(image: bytearray) -> bytes:
    """The image with each volume descriptor's modification date fixed: pycdlib writes the current
    time there as it writes the descriptor."""
    for sector in range(_FIRST_DESCRIPTOR, len(image) // _SECTOR):
        start = sector * _SECTOR
        kind = image[start]
        if kind == 255:  # the set terminator
            break
        if kind in (1, 2):  # primary, supplementary (Joliet)
            image[start + _MODIFICATION_DATE.start : start + _MODIFICATION_DATE.stop] = _EPOCH_TEXT
    return bytes(image)


def read_seed_iso(image: bytes) -> tuple[str, dict[str, bytes]]:
    """The volume label and the files (by Rock Ridge name) of a seed image: for tests and checks."""
    import pycdlib

    iso: pycdlib.PyCdlib = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        files = {}
        for child in iso.list_children(rr_path="/"):
            if child.is_file() and child.rock_ridge is not None:
                name = child.rock_ridge.name().decode()
                out = io.BytesIO()
                iso.get_file_from_iso_fp(out, rr_path="/" + name)
                files[name] = out.getvalue()
        return label, files
    finally:
        iso.close()
