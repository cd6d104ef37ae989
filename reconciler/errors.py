"""The exception tree. Callers catch these, never a library's own exception types.

::

    ReconcilerError
    ├── ManifestError          bad input: every problem found, each with file, line and field
    ├── DomainXMLError         domain XML the reconciler cannot read
    └── HostError              talking to a host failed (wraps libvirt errors)
        ├── TemporaryHostError     worth retrying: connection lost, daemon busy, timeout
        └── PermanentHostError     retrying will not help: refused definition, missing domain
"""

from __future__ import annotations

from dataclasses import dataclass


class ReconcilerError(Exception):
    """Base of every error the reconciler raises on purpose."""


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


class DomainXMLError(ReconcilerError):
    """Domain XML that cannot be read as a domain."""


class HostError(ReconcilerError):
    """A host could not be reached or refused an operation."""

    def __init__(self, host: str, message: str) -> None:
        self.host = host
        super().__init__(f"{host}: {message}")


class TemporaryHostError(HostError):
    """A host error that may go away on retry (connection lost, timeout)."""


class PermanentHostError(HostError):
    """A host error that a retry will not fix (invalid XML, unsupported operation)."""


class StalePlanError(ReconcilerError):
    """A saved plan whose hosts moved since it was made: nothing is applied."""
