"""Where the daemon's manifests come from: a git branch, or a plain directory that is watched.

A git source can be told what a new revision must pass before it is checked out
(:class:`RevisionChecks`): a signature by a trusted key, and a fast-forward from the revision
before. A refused revision is a ``RevisionRefusedError`` from :meth:`GitSource.update`; the loop
reports it like any failed fetch that no retry fixes (``/status``, the log) and keeps the last good
revision, checked out and applied, until a new one arrives.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from reconciler.errors import DaemonConfigError, SourceCheckError

FETCH_SOON_GAP = 10.0  # seconds: the least time between two fetches asked for by held domains


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


@dataclass(frozen=True)
class RevisionChecks:
    """What a new revision of a git source must pass before it is checked out.

    ``signers``: its head commit is signed by a key in this file (an OpenSSH allowed-signers file or
    a GnuPG keyring: ``daemon --verify-signatures``). ``require_fast_forward``: it descends from the
    revision checked out before; without it, a force-push to another history is only reported.
    """

    signers: Path | None = None
    require_fast_forward: bool = False

    @classmethod
    def from_options(cls, verify_signatures: str | None, require_fast_forward: bool) -> RevisionChecks:
        """The checks the daemon's command line asks for."""
        return cls(Path(verify_signatures) if verify_signatures else None, require_fast_forward)

    @property
    def asked(self) -> bool:
        """Whether any check is asked for."""
        return self.signers is not None or self.require_fast_forward


class GitSource:
    """A git URL cloned into the state directory, following one branch."""

    watchable = False

    def __init__(
        self, url: str, branch: str, path: str, state_dir: Path, checks: RevisionChecks | None = None
    ) -> None:
        from reconciler.adapters.gitsource import GitCheckout, TrustedKeys

        checks = checks or RevisionChecks()
        trust = TrustedKeys.load(checks.signers) if checks.signers is not None else None
        self.checkout = GitCheckout(
            url,
            branch,
            state_dir / "checkout",
            trust=trust,
            require_fast_forward=checks.require_fast_forward,
        )
        self.manifests = state_dir / "checkout" / path
        self._lock = threading.Lock()  # lanes ask side by side
        self._known_at = ""  # the revision the commits of ``_known`` are contained in
        self._known: frozenset[str] = frozenset()  # kept for the daemon's lifetime: ancestry never changes
        self._fetch_asked = -FETCH_SOON_GAP  # time.monotonic() when a held domain last asked for a fetch

    def update(self) -> str:
        """Fetch, check and check out the branch tip (a history rewrite let through is logged)."""
        return self.checkout.update()

    def contained_revisions(self, revision: str, commits: frozenset[str]) -> frozenset[str]:
        """Of ``commits``, those ``revision`` contains (itself or an ancestor). Positive answers are
        kept: asked once per commit while the revision moves forward (an ancestor of a revision is
        one of every revision after it); a history rewrite asks again."""
        with self._lock:
            if revision != self._known_at:
                before = self._known_at
                forward = bool(before) and before in self.checkout.contained(revision, frozenset({before}))
                self._known = self._known | {before} if forward else frozenset()
                self._known_at = revision
            asked = commits - self._known
            if asked:
                self._known |= self.checkout.contained(revision, asked)
            return commits & self._known

    def fetch_due(self) -> bool:
        """Whether a pass that held domains a newer revision wrote should ask for a fetch now: at
        most once every :data:`FETCH_SOON_GAP` seconds, so an unreachable remote is not hammered."""
        with self._lock:
            moment = time.monotonic()
            if moment - self._fetch_asked < FETCH_SOON_GAP:
                return False
            self._fetch_asked = moment
            return True

    @property
    def notice(self) -> str:
        """A warning about the revision checked out (a history rewrite let through), or ""."""
        return self.checkout.notice

    @property
    def identity(self) -> str:
        """The repository and folder, as every clone of it names them."""
        from reconciler.adapters.gitsource import root_identity

        return root_identity(self.manifests)


class DirectorySource:
    """A plain directory of manifests (no git): its revision is a digest of the files' contents.

    A bare git repository is refused with the ``file://`` URL to give instead: read as a folder it
    holds no manifest files, and the daemon would find "no manifests"."""

    watchable = True
    notice = ""

    def __init__(self, path: Path, checks: RevisionChecks | None = None) -> None:
        if is_bare_repository(path):
            raise DaemonConfigError(
                f"--source {path} is a bare git repository, not a folder of manifests: "
                f"give it as a git URL, --source file://{path.resolve()}"
            )
        if checks is not None and checks.asked:
            raise SourceCheckError(
                f"--verify-signatures and --require-fast-forward need a git source; {path} is a directory"
            )
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


def revision_answers(
    source: Source, revision: str, fetch: Callable[[], None]
) -> Callable[[frozenset[str]], frozenset[str]] | None:
    """What a pass at ``revision`` uses to hold domains a newer revision wrote
    (``ReconcileOptions.contained_revisions``); None for a directory source (nothing to compare).
    A commit not contained asks for a fetch soon (``fetch``): the newer revision is likely there."""
    if not isinstance(source, GitSource):
        return None
    git_source = source

    def contained(commits: frozenset[str]) -> frozenset[str]:
        found = git_source.contained_revisions(revision, commits)
        if found != commits and git_source.fetch_due():
            fetch()
        return found

    return contained


def is_bare_repository(path: Path) -> bool:
    """Whether ``path`` looks like a bare git repository (``HEAD``, ``objects/`` and ``refs/`` at its
    top): its manifests are in commits, not files, so it is read through git, not as a folder."""
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()
