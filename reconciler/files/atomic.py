"""The one way a file is written: whole or not at all, never half.

A temporary file in the target's own folder is written, flushed to disk (fsync), then renamed over
the target, and removed again if anything fails on the way. Readers see the old content or the new,
and a crash or a full disk never leaves a truncated state file, plan, snapshot or manifest behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, content: str | bytes, *, mode: int | None = None) -> None:
    """Replace ``path`` with ``content`` (text is UTF-8); ``mode`` sets the permissions (default 0600
    for a new file from ``mkstemp``, kept for an existing one unless given).

    The folder is created when missing. The rename is atomic on one file system, so the temporary
    file lives beside the target.
    """
    data = content.encode("utf-8") if isinstance(content, str) else content
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode is None:
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
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
