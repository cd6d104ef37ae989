"""Memory sizes: parse ``4GiB``-style strings to bytes and format bytes back for people.

Sizes are kept as whole KiB expressed in bytes, because libvirt stores memory in KiB: a manifest
value that is not a whole KiB is rounded up exactly as libvirt rounds it, so what we define and what
we later observe compare equal.
"""

from __future__ import annotations

import re

KIB = 1024

#: Units accepted in manifests (docs/design.md §2.4): binary with or without the ``B``, and decimal.
MANIFEST_UNITS: dict[str, int] = {
    "KiB": 1024,
    "Ki": 1024,
    "MiB": 1024**2,
    "Mi": 1024**2,
    "GiB": 1024**3,
    "Gi": 1024**3,
    "TiB": 1024**4,
    "Ti": 1024**4,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
}

#: Units libvirt accepts in the ``unit`` attribute of memory elements (case-insensitive there).
_LIBVIRT_UNITS: dict[str, int] = {
    "b": 1,
    "bytes": 1,
    "kb": 1000,
    "k": 1024,
    "kib": 1024,
    "mb": 1000**2,
    "m": 1024**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "g": 1024**3,
    "gib": 1024**3,
    "tb": 1000**4,
    "t": 1024**4,
    "tib": 1024**4,
    "pb": 1000**5,
    "p": 1024**5,
    "pib": 1024**5,
    "eb": 1000**6,
    "e": 1024**6,
    "eib": 1024**6,
}

#: The largest size a manifest may give: 16 PiB, above the most memory a 64-bit machine can address
#: today (x86-64's 52-bit physical addresses: 4 PiB). Beyond it a size is a typo or an attack on the
#: policy arithmetic, which sums sizes over thousands of domains and multiplies them by ratios.
MAX_SIZE = 16 * 1024**5
#: Digits a size's whole number may have: 16 PiB in KB is 17 digits; more only hides an overflow.
_MAX_DIGITS = 24
SIZE_PATTERN = r"^\s*(\d+(?:\.\d+)?)\s*(KiB|Ki|MiB|Mi|GiB|Gi|TiB|Ti|KB|MB|GB|TB)\s*$"
_SIZE_RE = re.compile(SIZE_PATTERN)


def round_up_to_kib(value: int) -> int:
    """Round a byte count up to a whole KiB, as libvirt does when it stores memory."""
    return -(-value // KIB) * KIB


def parse_size(text: object) -> int:
    """Parse a manifest size such as ``4GiB`` or ``512 MB`` to bytes (rounded up to a whole KiB).

    A bare number is refused: ``4096`` could mean bytes, KiB or MiB, and guessing wrong by 1024x
    is how hosts get overcommitted.
    """
    if isinstance(text, bool) or not isinstance(text, str):
        if isinstance(text, int | float):
            raise ValueError(
                f"bare number {text!r} is ambiguous: write it with a unit, e.g. '{text}MiB' or '{text}GiB'"
            )
        raise ValueError(f"expected a size string such as '4GiB', got {type(text).__name__}")
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(
            f"invalid size {text[:40]!r}: expected a number with a unit ({', '.join(MANIFEST_UNITS)}), "
            "e.g. '4GiB'"
        )
    number, unit = match.groups()
    if len(number.partition(".")[0].lstrip("0")) > _MAX_DIGITS:
        raise ValueError(f"size {text.strip()[:40]!r} is larger than 16 PiB, the most a manifest may give")
    value = float(number) * MANIFEST_UNITS[unit] if "." in number else int(number) * MANIFEST_UNITS[unit]
    size = round_up_to_kib(int(value + 0.5) if isinstance(value, float) else value)
    if size > MAX_SIZE:
        raise ValueError(f"size {text.strip()[:40]!r} is larger than 16 PiB, the most a manifest may give")
    return size


def parse_libvirt_size(text: str | None, unit: str | None) -> int:
    """Parse a libvirt memory element (text plus optional ``unit``, default KiB) to bytes."""
    if text is None or not text.strip():
        raise ValueError("empty memory element")
    factor = _LIBVIRT_UNITS.get((unit or "KiB").strip().lower())
    if factor is None:
        raise ValueError(f"unknown memory unit {unit!r}")
    return round_up_to_kib(int(text.strip()) * factor)


def format_size(value: int) -> str:
    """Format bytes with the largest binary unit that represents them exactly (``4GiB``, ``1536MiB``)."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value % factor == 0 and value >= factor:
            return f"{value // factor}{unit}"
    if value == 0:
        return "0KiB"
    return f"{value}B"


def human_size(value: int | float) -> str:
    """Bytes for people, with up to two decimals in the largest fitting binary unit (``22.5GiB``)."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(value) >= factor:
            return f"{value / factor:.2f}".rstrip("0").rstrip(".") + unit
    return f"{int(value)}B"
