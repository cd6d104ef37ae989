"""The one way a file is written: whole or not at all, never half.

A temporary file in the target's own folder is written, flushed to disk (fsync), then renamed over
the target, and removed again if anything fails on the way; the folder is flushed too, so the rename
itself survives a crash. Readers see the old content or the new, and a crash or a full disk never
leaves a truncated state file, plan, snapshot or manifest behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path


def write_atomically(
    path: Path, content: str | bytes, *, mode: int | None = None, exclusive: bool = False
) -> None:
    """Replace ``path`` with ``content`` (text is UTF-8); ``mode`` sets the permissions (default 0600
    for a new file from ``mkstemp``, kept for an existing one unless given).

    The folder is created when missing. The rename is atomic on one file system, so the temporary
    file lives beside the target. With ``exclusive``, ``path`` is only ever created, never replaced:
    ``FileExistsError`` when it exists (scaffolding that must keep what a user already has).
    """
    data = content.encode("utf-8") if isinstance(content, str) else content
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode is None and not exclusive:
        with contextlib.suppress(FileNotFoundError):
            mode = path.stat().st_mode & 0o7777
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(temporary, mode)
        if exclusive:
            _create(Path(temporary), path)
        else:
            os.replace(temporary, path)
    finally:
        with contextlib.suppress(OSError):  # gone once renamed; a link leaves it behind
            os.unlink(temporary)
    fsync_directory(path.parent)


def _create(temporary: Path, path: Path) -> None:
    """Give the finished ``temporary`` the name ``path``, which must not exist yet.

    A hard link fails when the name is taken, whatever another process did meanwhile. Where the file
    system has no hard links (FAT, some FUSE ones), the name is checked, then renamed over: a file
    created between the two would be replaced, a race accepted there for want of anything better.
    """
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise
    except OSError:
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
        os.replace(temporary, path)


def fsync_directory(folder: Path) -> None:
    """Flush ``folder``'s entries to disk: a rename or a new file in it is durable only after this.

    Some file systems refuse to open or flush a folder (network and FUSE ones, Windows): there the
    entries are as durable as the file system makes them, and nothing better can be done.
    """
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
