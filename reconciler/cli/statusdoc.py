"""The daemon's ``/status`` document as ``virt-reconcile status`` reads it: models of what it shows.

The answer comes from a server that may be another version, misconfigured or hostile, so it is read
through these models before anything is printed: a document of another shape is one clear
``StatusError`` naming where it is wrong, never a traceback half-way through the output. Every field
is optional (what a daemon leaves out takes the default the output always showed for it), ``null``
is taken as left out (a ``status.json`` written by hand or by an older daemon is loaded as it is),
and fields the command does not show (``policy``, ``pendingRestarts``, ``reconciledRevision``,
anything newer) are ignored, so a change there cannot break ``status``. The types are strict: a
number where text is expected, or ``1`` for ``true``, is an error, never a guess.

The shape is the daemon's (``reconciler.daemon.status``), written down again here on purpose: the
command does not import the daemon package, which would cost its start-up time.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails

import reconciler.spec.fieldtypes  # noqa: F401  (models built without pydantic's plugin discovery)
from reconciler.errors import StatusError

#: What each kind of type error says the value should be.
EXPECTED = {
    "model_type": "an object",
    "dict_type": "an object",
    "list_type": "a list",
    "string_type": "text",
    "bool_type": "true or false",
    "int_type": "a whole number",
    "float_type": "a number",
}
KEY_SHOWN = 40  # characters of a host or domain name shown where the document is wrong


class _Part(BaseModel):
    """Base of the document's parts: camelCase, strict, unknown fields ignored, ``null`` left out."""

    model_config = ConfigDict(frozen=True, strict=True, extra="ignore", alias_generator=to_camel)

    @model_validator(mode="before")
    @classmethod
    def _null_is_left_out(cls, data: Any) -> Any:
        """A field sent as ``null`` takes its default, as when it is left out."""
        return (
            {key: value for key, value in data.items() if value is not None}
            if isinstance(data, dict)
            else data
        )


class DomainLine(_Part):
    """One managed domain of a host: its sync state, health, and why."""

    sync: str = ""  # synced | outOfSync | pendingRestart | orphan | suspended | refused | error
    health: str = ""
    message: str = ""


class HostLine(_Part):
    """One host: its last result, the revisions, its domains, and whether it is left alone or waits."""

    revision: str = ""
    result: str = "?"
    applied_revision: str = ""
    message: str = ""
    time: str = ""
    domains: dict[str, DomainLine] = Field(default_factory=dict)
    suspended: bool = False
    deferred: str = ""  # why its changes wait, "" when they do not


class SourceLine(_Part):
    """The manifest source: the last fetch's revision and error."""

    revision: str = ""
    message: str = ""
    time: str = ""


class RunningPass(_Part):
    """A pass running now."""

    hosts: list[str] = Field(default_factory=list)
    revision: str = ""
    trigger: str = ""
    started: str = ""


class PastPass(_Part):
    """A pass of the history (newest first), ``count`` identical ones in a row merged into it."""

    time: str = ""
    hosts: list[str] = Field(default_factory=list)
    revision: str = ""
    trigger: str = ""
    result: str = "?"
    actions: list[str] = Field(default_factory=list)
    message: str = ""
    duration: float = 0.0  # seconds
    count: int = 1
    first: str = ""  # when the first of the merged passes ended


class StatusDocument(_Part):
    """The ``/status`` document: the hosts, the source, the revision's error and the passes."""

    hosts: dict[str, HostLine] = Field(default_factory=dict)
    source: SourceLine = Field(default_factory=SourceLine)
    revision_error: str = ""
    in_progress: list[RunningPass] = Field(default_factory=list)
    history: list[PastPass] = Field(default_factory=list)


def parse(answer: bytes, address: str) -> StatusDocument:
    """The document in ``answer`` (JSON) from ``address``; a ``StatusError`` saying where it is not
    JSON or not of the document's shape (the first problem, and how many more there are)."""
    try:
        return StatusDocument.model_validate_json(answer)
    except ValidationError as err:
        problems = err.errors(include_url=False)
        more = len(problems) - 1
        others = f" (and {more} more problem{'s' * (more != 1)})" if more else ""
        raise StatusError(f"cannot read {address}: {_problem(problems[0])}{others}") from None


def _problem(error: ErrorDetails) -> str:
    """One validation error in a sentence: where in the document, what it should be, what it is."""
    if error["type"] == "json_invalid":
        return f"not JSON ({error.get('ctx', {}).get('error', error['msg'])})"
    where = _place(error["loc"])
    expected = EXPECTED.get(error["type"])
    if expected is None:
        return f"not a status document: {where}: {error['msg']}"
    return f"not a status document: {where} should be {expected}, not {_json_kind(error['input'])}"


def _place(loc: tuple[int | str, ...]) -> str:
    """Where in the document, as ``hosts.hv1.domains`` or ``history[2].count``; a name that is not
    plain (a dot, a control character, very long) is quoted, so the error stays one line."""
    if not loc:
        return "the document"
    place = ""
    for part in loc:
        if isinstance(part, int):
            place += f"[{part}]"
            continue
        plain = part.isprintable() and part and "." not in part and len(part) <= KEY_SHOWN
        name = part if plain else json.dumps(part[:KEY_SHOWN] + ("…" if len(part) > KEY_SHOWN else ""))
        place += f".{name}" if place else name
    return place


def _json_kind(value: Any) -> str:
    """What a JSON value is, in the words of :data:`EXPECTED`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    return "a list" if isinstance(value, list) else "an object"
