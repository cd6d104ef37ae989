"""Manifest text as a stranger wrote it, apart from its YAML: the file read within its size limit,
strings checked for what may reach neither a terminal nor libvirt's XML, field paths for people.

The limits themselves, and why, are described in :mod:`reconciler.spec.yamltree`, which parses the
YAML; this part is kept apart because it needs no PyYAML, so manifests whose parse the cache holds
are loaded without importing it (some 8 ms of every start-up).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from datetime import date
from typing import Any

from reconciler.errors import Problem

MAX_FILE_BYTES = 1024 * 1024

Loc = tuple[str | int, ...]

#: Characters no manifest string may hold: control characters, and what XML 1.0 cannot carry.
FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_PLAIN = (str, int, float, bool, type(None), list, dict, date)


def read_manifest(path: str, file: str, problems: list[Problem]) -> tuple[bytes, str] | None:
    """The bytes and text of a manifest file, or None (and a problem): larger than
    :data:`MAX_FILE_BYTES`, not a regular file (a FIFO would block, a device never ends), not UTF-8."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(handle).st_mode):
                problems.append(Problem(file, None, None, "not a regular file"))
                return None
            with open(handle, "rb", closefd=False) as stream:  # a regular file: open() takes it
                content = stream.read(MAX_FILE_BYTES + 1)
        finally:
            os.close(handle)
    except OSError as err:
        problems.append(Problem(file, None, None, f"cannot read: {err.strerror or err}"))
        return None
    if len(content) > MAX_FILE_BYTES:
        line = content.count(b"\n", 0, MAX_FILE_BYTES) + 1
        limit = f"{MAX_FILE_BYTES // 1024**2} MiB"
        message = (
            f"the file is larger than {limit}, the most one manifest file may hold (this line is past it)"
        )
        problems.append(Problem(file, line, None, message + ": split it into several files"))
        return None
    try:
        return content, content.decode("utf-8")
    except UnicodeDecodeError as err:
        start = content.rfind(b"\n", 0, err.start) + 1
        line = content.count(b"\n", 0, err.start) + 1
        column = len(content[start : err.start].decode("utf-8")) + 1
        message = f"not UTF-8: byte 0x{content[err.start]:02x} at column {column} cannot be decoded"
        problems.append(Problem(file, line, None, message))
        return None


def bad_strings(data: Any) -> Iterator[tuple[Loc, str]]:
    """Each field path whose string (a key, or a value) holds a :data:`FORBIDDEN` character, or
    whose value is of a type no manifest field takes, with a sentence saying what is wrong."""
    stack: list[tuple[Loc, Any]] = [((), data)]
    while stack:
        loc, value = stack.pop()
        if isinstance(value, str):
            found = FORBIDDEN.search(value)
            if found is not None:
                yield loc, _forbidden(found)
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                child = (*loc, key if isinstance(key, str | int) else str(key))
                found = FORBIDDEN.search(key) if isinstance(key, str) else None
                if found is not None:
                    yield child, "in the key: " + _forbidden(found)
                stack.append((child, item))
        elif isinstance(value, list):
            stack.extend(((*loc, index), item) for index, item in reversed(list(enumerate(value))))
        elif not isinstance(value, _PLAIN):
            yield loc, f"a YAML {type(value).__name__} is not a value any manifest field takes"


def _forbidden(found: re.Match[str]) -> str:
    character = found.group()
    return (
        f"character U+{ord(character):04X} at position {found.start() + 1} is not allowed: manifest "
        "strings hold no control characters (tabs and line breaks included) and nothing XML cannot carry"
    )


def printable(text: str) -> str:
    """``text`` with every :data:`FORBIDDEN` character written as an escape, safe on a terminal."""
    return FORBIDDEN.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


def dotted(loc: Loc) -> str:
    """Render a field path the way a manifest author reads it: ``spec.disks[0].path``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return printable(text)
