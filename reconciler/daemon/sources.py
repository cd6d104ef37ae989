"""Where the daemon's manifests come from: a git branch, or a plain directory that is watched."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Protocol


class Source(Protocol):
    """Where the manifests come from: ``update()`` brings them up to date and returns the revision.

    ``update()`` raises a ``ReconcilerError``; a retryable one (``SourceError``) is retried with
    backoff, any other waits for the next trigger.
    """

    manifests: Path
    watchable: bool

    def update(self) -> str:
        """Fetch (git) or look (directory); return the revision now in ``manifests``."""
        ...

    @property
    def identity(self) -> str:
        """The manifest root's identity, recorded in the ownership of what it defines."""
        ...


class GitSource:
    """A git URL cloned into the state directory, following one branch."""

    watchable = False

    def __init__(self, url: str, branch: str, path: str, state_dir: Path) -> None:
        from reconciler.adapters.gitsource import GitCheckout

        self.checkout = GitCheckout(url, branch, state_dir / "checkout")
        self.manifests = state_dir / "checkout" / path

    def update(self) -> str:
        """Fetch and check out the branch tip."""
        return self.checkout.update()

    @property
    def identity(self) -> str:
        """The repository and folder, as every clone of it names them."""
        from reconciler.adapters.gitsource import root_identity

        return root_identity(self.manifests)


class DirectorySource:
    """A plain directory of manifests (no git): its revision is a digest of the files' contents."""

    watchable = True

    def __init__(self, path: Path) -> None:
        self.manifests = path

    @property
    def identity(self) -> str:
        """The folder (or, inside a git work tree, the repository and folder)."""
        from reconciler.adapters.gitsource import root_identity

        return root_identity(self.manifests)

    def update(self) -> str:
        """A digest of every manifest file's name and content."""
        from reconciler.spec.manifests import manifest_files

        digest = hashlib.sha256()
        for file in manifest_files(self.manifests):
            digest.update(str(file.relative_to(self.manifests)).encode() + b"\0")
            with contextlib.suppress(OSError):
                digest.update(file.read_bytes())
        return "dir:" + digest.hexdigest()[:12]
