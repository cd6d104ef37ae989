"""The exception tree. Callers catch these, never a library's own exception types.

Every error the reconciler raises on purpose is a ``ReconcilerError``; an adapter wraps the library
error it met (``raise ... from err``) so the cause stays visible. ``retryable`` says what a caller
that keeps running (the daemon) should do: retry with backoff (the world may change by itself), or
wait for new input (a new revision, a new command line).

::

    ReconcilerError                 retryable?
    ├── ManifestError               no    bad input: every problem found, each with file, line and field
    ├── SelectionError              no    --host names a host the manifests do not have
    ├── DomainXMLError              no    domain XML the reconciler cannot read as a domain
    ├── StalePlanError              no    a saved plan whose hosts moved since it was made
    ├── SavedPlanError              no    a file that is not a readable saved plan
    ├── AdoptionError               no    import / backup / restore cannot go ahead (and says why)
    ├── SnapshotError               no    plan --state names no readable snapshot file
    ├── ScaffoldError               no    init cannot write a repository where asked
    ├── DaemonConfigError           no    the daemon cannot start as told (an empty webhook secret)
    ├── ManifestTimeoutError        no    the daemon gave up on manifests too slow to load
    ├── SourceError                 yes   the manifest source (git) could not be fetched
    ├── GitRefusedError             no    git will not tell the manifests' commit (another user's checkout)
    ├── RevisionRefusedError        no    the source's new revision is unsigned, untrusted or rewinds history
    ├── SourceCheckError            no    --verify-signatures / --require-fast-forward cannot be set up
    ├── StatusError                 yes   a daemon's /status could not be read (it may be starting)
    └── HostError                   -     talking to a host failed (wraps libvirt errors)
        ├── TemporaryHostError      yes   connection lost, daemon busy, timeout
        │   └── LockBusyError       yes   another run holds the host's apply lock
        └── PermanentHostError      no    wrong address, refused credentials or definition, unsupported
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


class ReconcilerError(Exception):
    """Base of every error the reconciler raises on purpose."""

    #: Whether trying the same thing again later, with the same input, may succeed.
    retryable: ClassVar[bool] = False


@dataclass(frozen=True)
class Problem:
    """One problem in the manifests: where it is and what is wrong."""

    file: str
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class ManifestError(ReconcilerError):
    """The manifests are invalid; ``problems`` lists every problem found in the whole tree."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class SelectionError(ReconcilerError):
    """A host selection (``--host``) names hosts the manifests do not define."""


class DomainXMLError(ReconcilerError):
    """Domain XML that cannot be read as a domain."""


class StalePlanError(ReconcilerError):
    """A saved plan whose hosts moved since it was made: nothing is applied."""


class SavedPlanError(ReconcilerError):
    """A file given as a saved plan that cannot be read as one."""


class AdoptionError(ReconcilerError):
    """import, backup or restore cannot go ahead; the message says why and what to do."""


class SnapshotError(ReconcilerError):
    """A file or folder given as host snapshots that holds no readable snapshot."""


class ScaffoldError(ReconcilerError):
    """``init`` cannot write a new repository where asked (a file, or a non-empty folder)."""


class DaemonConfigError(ReconcilerError):
    """The daemon cannot start as told: a setting that would leave it unsafe (an empty webhook secret)."""


class ManifestTimeoutError(ReconcilerError):
    """The manifests did not load within the daemon's time budget: that revision is an error (the
    same files would be as slow again, so only a new revision or a resync tries once more)."""


class SourceError(ReconcilerError):
    """The git source could not be cloned or fetched (the last good checkout stays in place)."""

    retryable = True


class GitRefusedError(ReconcilerError):
    """git would not say which commit the manifests come from (a checkout another user owns, which
    git refuses to read for us; or no git installed): nothing is planned or applied without it."""


class RevisionRefusedError(ReconcilerError):
    """The source's newest revision fails a check the operator asked for: its head commit is not
    signed by a trusted key, or (``--require-fast-forward``) it does not descend from the revision
    checked out before. Nothing of it is checked out or applied; the last good revision stays."""


class SourceCheckError(ReconcilerError):
    """The checks asked of the source cannot be set up: the keys file is neither an OpenSSH
    allowed-signers file nor a GnuPG keyring, or the source is a plain directory (no commits)."""


class StatusError(ReconcilerError):
    """A running daemon's ``/status`` could not be read: not running (yet), or another address."""

    retryable = True


class HostError(ReconcilerError):
    """A host could not be reached or refused an operation."""

    def __init__(self, host: str, message: str) -> None:
        self.host = host
        super().__init__(f"{host}: {message}")


class TemporaryHostError(HostError):
    """A host error that may go away on retry (connection lost, timeout)."""

    retryable = True


class LockBusyError(TemporaryHostError):
    """Another run holds the host's apply lock (and kept it past the wait, if there was one)."""


class PermanentHostError(HostError):
    """A host error that a retry will not fix (a wrong address, refused credentials, invalid XML, an
    unsupported operation)."""
