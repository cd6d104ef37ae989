"""Output folders of ``import`` and ``backup``: written aside, then moved in file by file.

Files are first written into a hidden staging folder inside the target, then each one the command
decides to keep is renamed over its namesake in the target. So a failure leaves the target as it
was, and ``--force`` replaces only the files the command writes: every other file in the target,
another domain's manifest or backup, a README, stays where it is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from reconciler.errors import AdoptionError

PRIVATE = 0o700  # folders that hold secrets (backups): the owner only


class Staging:
    """A staging folder (``folder``) whose files :meth:`publish` moves into ``target``."""

    def __init__(self, target: Path, folder: Path, *, private: bool) -> None:
        self.target = target
        self.folder = folder
        self.private = private
        self.published: list[Path] = []

    def publish(self, relative: str) -> None:
        """Move the staged file or folder ``relative`` into the target, replacing only the files it
        holds; folders are merged, never removed."""
        staged = self.folder / relative
        files = [staged] if staged.is_file() else sorted(p for p in staged.rglob("*") if p.is_file())
        if staged.is_dir():
            self._folder(self.target / relative)
        for file in files:
            destination = self.target / file.relative_to(self.folder)
            self._folder(destination.parent)
            os.replace(file, destination)
            self.published.append(destination)

    def _folder(self, path: Path) -> None:
        """Create ``path`` (and its parents under the target) with the staging folders' mode."""
        missing = [p for p in (path, *path.parents) if p != self.target and self.target in p.parents]
        for folder in reversed(missing):
            if not folder.is_dir():
                folder.mkdir(mode=PRIVATE if self.private else 0o777)
            if self.private:
                folder.chmod(PRIVATE)


@contextmanager
def staged(target: Path, *, force: bool, private: bool = False) -> Iterator[Staging]:
    """A :class:`Staging` for ``target``, which must be new or empty unless ``force``.

    What the block leaves unpublished is dropped with the staging folder; a target the block
    created and left empty is removed again. ``private`` makes every folder created mode 0700.
    """
    if target.exists() and not target.is_dir():
        raise AdoptionError(f"{target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise AdoptionError(
            f"{target} exists and is not empty (--force writes into it, replacing only the files "
            "of the domains written)"
        )
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    if created and private:
        target.chmod(PRIVATE)
    staging = Staging(target, Path(tempfile.mkdtemp(prefix=".staging-", dir=target)), private=private)
    try:
        yield staging
    finally:
        shutil.rmtree(staging.folder, ignore_errors=True)
        if created and not staging.published:
            with contextlib.suppress(OSError):
                target.rmdir()
