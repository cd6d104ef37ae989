"""What the daemon tells the outside world after a pass, and where: pure, no I/O but reading a token.

A ``--notify`` value names a :class:`Receiver`: a generic JSON webhook (``https://…``), a
Slack-compatible incoming webhook (``slack+https://…``, or any ``https://hooks.slack.com/…``), or a
GitHub commit status (``github:OWNER/REPO?token-file=PATH``); the value itself may come from a file
(``@FILE``) or an environment variable (``env:NAME``), so a URL holding a secret is not in the
process's command line. A :class:`Notice` is one event (``applied``, ``drift``, ``refused``,
``error``, ``deferred``, ``suspended``, and for commit statuses only ``unchanged``);
:class:`NoticeFilter` decides which verdicts become notices (never a routine "unchanged" pass, never
the same error twice in a row), and :func:`request_for` turns a notice into the HTTP request one
receiver wants. Secrets never leave here in text: a receiver's :attr:`Receiver.name` (logs, metrics)
shows a URL's scheme, host and port only (Slack, Discord, Teams and n8n put the secret in the path),
and the GitHub token is read from its file only to build a request.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from reconciler import __version__

SLACK_HOST = "hooks.slack.com"
GITHUB_API = "https://api.github.com"
CONTEXT = "virt-reconcile"  # a GitHub status's context: this, then "/HOST"
DESCRIPTION_CHARS = 140  # GitHub refuses a longer status description
MESSAGE_CHARS = 4000  # a notice's message is cut to this (a manifest error may list hundreds)
SLACK_SECTION_CHARS = 3000  # Slack's limit for one section block's text
TOKEN_BYTES = 4096  # a token file larger than this is not a token
VALUE_BYTES = 8192  # a ``--notify @FILE`` larger than this holds no one URL
USER_AGENT = f"virt-reconcile/{__version__}"
_OWNER = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")
_REPOSITORY = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_GITHUB_PARAMS = ("token-file", "api")
USAGE = (
    "use https://… or http://… (a JSON webhook), slack+https://… (a Slack-compatible webhook) or "
    "github:OWNER/REPO?token-file=FILE[&api=URL] (a commit status); @FILE or env:NAME reads the "
    "value from a file or an environment variable"
)


class NotifyValueError(ValueError):
    """A ``--notify`` value that names no receiver; the text says why and what would do."""


class ReceiverKind(StrEnum):
    """How a receiver wants its notices."""

    WEBHOOK = "webhook"
    SLACK = "slack"
    GITHUB = "github"


class Event(StrEnum):
    """What a notice reports."""

    APPLIED = "applied"
    DRIFT = "drift"  # a change made outside git was put back
    REFUSED = "refused"
    ERROR = "error"
    DEFERRED = "deferred"  # the changes wait for the host's sync window
    SUSPENDED = "suspended"  # the host's suspend annotation leaves it alone
    UNCHANGED = "unchanged"  # a new revision that changes nothing here: only a commit status says so


#: The events that mean "not done yet, on purpose": a commit status ``pending``.
WAITING = (Event.DEFERRED, Event.SUSPENDED)
_GITHUB_STATE = {
    Event.APPLIED: "success",
    Event.DRIFT: "success",
    Event.UNCHANGED: "success",
    Event.REFUSED: "failure",
    Event.DEFERRED: "pending",
    Event.SUSPENDED: "pending",
}
_SLACK_MARK = {
    Event.APPLIED: ":white_check_mark:",
    Event.DRIFT: ":arrows_counterclockwise:",
    Event.REFUSED: ":no_entry:",
    Event.ERROR: ":x:",
    Event.DEFERRED: ":hourglass_flowing_sand:",
    Event.SUSPENDED: ":double_vertical_bar:",
    Event.UNCHANGED: ":white_check_mark:",
}


@dataclass(frozen=True)
class Receiver:
    """One ``--notify`` target. ``url`` is where notices go (for GitHub, the API base); ``name`` is
    how logs and metrics show it, with no secret in it."""

    kind: ReceiverKind
    url: str = field(repr=False)
    name: str
    repository: str = ""  # GitHub's OWNER/REPO
    token_file: Path | None = None  # GitHub's token, read at each delivery (a rotated token is used)


@dataclass(frozen=True)
class Notifications:
    """Where notices go and how hard the sender tries: each delivery within ``timeout`` seconds,
    ``attempts`` tries ``backoff`` s, then twice that, apart; at most ``capacity`` waiting per receiver."""

    receivers: tuple[Receiver, ...] = ()
    timeout: float = 5.0
    attempts: int = 3
    backoff: float = 1.0
    capacity: int = 100


@dataclass(frozen=True)
class Notice:
    """One event: a host's verdict (``host`` "" for a revision no host could use)."""

    event: Event
    host: str
    revision: str
    message: str
    time: str
    reason: str = ""  # why the pass ran: new revision, drift, retry, resync...
    actions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Request:
    """An HTTP POST to send: where, with which headers and body."""

    url: str
    headers: dict[str, str]
    body: bytes


# ------------------------------------------------------------------------------ --notify values


def parse_receiver(text: str) -> Receiver:
    """The receiver a ``--notify`` value names; :class:`NotifyValueError` with the reason if none."""
    if not text.isprintable() or any(char.isspace() for char in text):
        raise NotifyValueError("a notification URL has no spaces or control characters")
    if text.startswith("github:"):
        return _github_receiver(text)
    slack = text.startswith("slack+")
    url = text.removeprefix("slack+")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NotifyValueError(f"not a notification URL: {USAGE}")
    try:
        port = parts.port
    except ValueError:
        raise NotifyValueError("the URL's port is not a number from 0 to 65535") from None
    shown_port = f":{port}" if port is not None else ""
    origin = f"{parts.scheme}://{_shown_host(parts.hostname)}{shown_port}"
    # The path is shown by neither: it is the secret of a Slack, Discord, Teams or n8n webhook.
    if slack or parts.hostname.lower() == SLACK_HOST:
        return Receiver(ReceiverKind.SLACK, url, f"slack:{origin}")
    return Receiver(ReceiverKind.WEBHOOK, url, f"webhook:{origin}")


def notify_value(text: str) -> str:
    """A ``--notify`` value as given, or read from where it points: ``@FILE`` (the file's one line)
    or ``env:NAME`` (the environment variable), so a secret URL is not in the command line that
    ``ps`` and ``/proc/PID/cmdline`` show; :class:`NotifyValueError` naming the file or variable
    (never what it holds) when it cannot be read or is empty."""
    if text.startswith("env:"):
        name = text.removeprefix("env:")
        value = os.environ.get(name, "").strip()
        if not value:
            raise NotifyValueError(f"the environment variable {name!r} is not set or is empty")
        return value
    if not text.startswith("@"):
        return text
    path = Path(text.removeprefix("@")).expanduser()
    try:
        with path.open("rb") as file:
            data = file.read(VALUE_BYTES + 1)
    except OSError as err:
        raise NotifyValueError(f"{path}: {err.strerror or err}") from None
    value = data.decode("utf-8", "replace").strip()
    if len(data) > VALUE_BYTES or not value or "\n" in value:
        raise NotifyValueError(f"{path} does not hold one notification URL (one line)")
    return value


def shown_value(text: str) -> str:
    """A ``--notify`` value as an error message may show it: a ``github:`` target whole (it holds a
    file's path, not a secret); of a URL, its scheme and host only."""
    if text.startswith("github:"):
        return repr(text)
    try:
        parts = urlsplit(text)
        host = parts.hostname
    except ValueError:
        host = None
    return f"'{parts.scheme}://{host}/…'" if host and text.isprintable() else "the value given"


def _shown_host(hostname: str) -> str:
    """A host name as written in a URL (an IPv6 address in brackets)."""
    return f"[{hostname}]" if ":" in hostname else hostname


def _github_receiver(text: str) -> Receiver:
    """``github:OWNER/REPO?token-file=PATH[&api=URL]``: the token file must hold a token now."""
    target, _, query = text.removeprefix("github:").partition("?")
    owner, _, repository = target.partition("/")
    if not (_OWNER.match(owner) and _REPOSITORY.match(repository)) or repository in (".", ".."):
        raise NotifyValueError(f"{target!r} is not a GitHub OWNER/REPO")
    params = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(params) - set(_GITHUB_PARAMS))
    if unknown:
        raise NotifyValueError(f"unknown parameter {unknown[0]!r} (github: takes token-file and api)")
    if not params.get("token-file"):
        raise NotifyValueError("github: needs ?token-file=FILE, a file holding the token")
    token_file = Path(params["token-file"]).expanduser().absolute()
    read_token(token_file)  # a missing or empty file is refused at start, not at the first push
    api = params.get("api", GITHUB_API).rstrip("/")
    parts = urlsplit(api)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.query:
        raise NotifyValueError(f"api={api!r} is not an API base such as {GITHUB_API}")
    return Receiver(
        ReceiverKind.GITHUB, api, f"github:{owner}/{repository}", f"{owner}/{repository}", token_file
    )


def read_token(path: Path) -> str:
    """The token in ``path`` (surrounding blanks dropped); :class:`NotifyValueError` naming the file
    (never its content) when it cannot be read or holds none."""
    try:
        with path.open("rb") as file:
            data = file.read(TOKEN_BYTES + 1)
    except OSError as err:
        raise NotifyValueError(f"token file {path}: {err.strerror or err}") from None
    token = data.decode("utf-8", "replace").strip()
    if len(data) > TOKEN_BYTES or not token or not token.isprintable() or " " in token:
        raise NotifyValueError(f"token file {path} does not hold one token (one line, no spaces)")
    return token


def named_apart(receivers: Sequence[Receiver]) -> tuple[Receiver, ...]:
    """``receivers`` with a name each of its own (``#2``, ``#3`` after a repeated one), so logs and
    metrics tell apart two webhooks whose URLs differ only in what is hidden."""
    seen: dict[str, int] = {}
    named: list[Receiver] = []
    for receiver in receivers:
        seen[receiver.name] = seen.get(receiver.name, 0) + 1
        count = seen[receiver.name]
        named.append(receiver if count == 1 else _renamed(receiver, f"{receiver.name}#{count}"))
    return tuple(named)


def _renamed(receiver: Receiver, name: str) -> Receiver:
    return Receiver(receiver.kind, receiver.url, name, receiver.repository, receiver.token_file)


# ------------------------------------------------------------------------------ which verdicts


class NoticeFilter:
    """Which verdicts become notices (thread-safe: host lanes report side by side).

    ``applied`` and ``drift`` always; ``refused`` and ``error`` unless they repeat the last notice of
    that host (same revision, same message: a retry meeting the same error, a resync meeting the same
    refusal); ``deferred`` and ``suspended`` once per revision (a deferral's message names a time
    that may move); ``unchanged`` only when it ends an error, refusal or wait notified before, as
    ``applied`` (a revert commit that fixes a broken revision changes nothing, yet the alert must
    clear). :meth:`first_at` tells a commit status apart: each revision a host reaches gets one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_failure: dict[str, tuple[Event, str, str]] = {}  # host ("" = every) -> event
        self._failing: set[str] = set()
        self._every_failing = False  # a revision no host could use, since which ``_cleared`` recovered
        self._cleared: set[str] = set()
        self._reached: dict[str, str] = {}  # host -> the revision of its last verdict

    def first_at(self, host: str, revision: str) -> bool:
        """Whether this is ``host``'s first verdict at ``revision`` (and remember it)."""
        with self._lock:
            first = self._reached.get(host) != revision
            self._reached[host] = revision
            return first

    def verdict(self, host: str, revision: str, result: str, drift: bool, message: str) -> Event | None:
        """The event to send for one host's verdict (``result`` applied, unchanged, refused, error,
        deferred or suspended)."""
        with self._lock:
            if result in ("applied", "unchanged"):
                was_failing = host in self._failing or (self._every_failing and host not in self._cleared)
                self._failing.discard(host)
                self._cleared.add(host)
                self._last_failure.pop(host, None)
                if result == "applied":
                    return Event.DRIFT if drift else Event.APPLIED
                return Event.APPLIED if was_failing else None
            kinds = {"refused": Event.REFUSED, "error": Event.ERROR}
            kinds |= {event.value: event for event in WAITING}
            if result not in kinds:
                return None  # a result this filter does not know is nobody's alert
            event = kinds[result]
            shown = "" if event in WAITING else message
            return event if self._failed(host, (event, revision, shown)) else None

    def revision_failed(self, hosts: Iterable[str], revision: str, message: str) -> bool:
        """Whether to send a revision's error (no host could use it; ``hosts`` () = every host)."""
        with self._lock:
            named = set(hosts)
            if named:
                self._failing |= named
            else:
                self._every_failing = True
                self._cleared.clear()
            return self._failed("", (Event.ERROR, revision, message))

    def _failed(self, key: str, failure: tuple[Event, str, str]) -> bool:
        if key:
            self._failing.add(key)
        repeated = self._last_failure.get(key) == failure
        self._last_failure[key] = failure
        return not repeated


# ------------------------------------------------------------------------------ the requests


def request_for(receiver: Receiver, notice: Notice) -> Request | None:
    """The POST that tells ``receiver`` about ``notice``; None when it has nothing to say (a GitHub
    status needs a commit, and a directory source's revision is none)."""
    json_headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if receiver.kind is not ReceiverKind.GITHUB:
        url, credentials = _without_user_info(receiver.url)
        if credentials:
            json_headers["Authorization"] = f"Basic {credentials}"
        is_slack = receiver.kind is ReceiverKind.SLACK
        return Request(
            url, json_headers, _json(slack_document(notice) if is_slack else event_document(notice))
        )
    if not _SHA.match(notice.revision):
        return None
    assert receiver.token_file is not None
    headers = {
        **json_headers,
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": "2022-11-28",
        "Authorization": f"Bearer {read_token(receiver.token_file)}",
    }
    url = f"{receiver.url}/repos/{receiver.repository}/statuses/{quote(notice.revision)}"
    return Request(url, headers, _json(github_status(notice)))


def _without_user_info(url: str) -> tuple[str, str]:
    """``url`` without its ``user:password@`` (which urllib would take for part of the host name),
    and those credentials for HTTP basic authentication (base64, "" when there are none)."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, ""
    netloc = parts.netloc.rpartition("@")[2]
    pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return urlunsplit(parts._replace(netloc=netloc)), base64.b64encode(pair.encode()).decode()


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode()


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def event_document(notice: Notice) -> dict[str, Any]:
    """The generic webhook's JSON event."""
    return {
        "event": notice.event.value,
        "host": notice.host or None,
        "revision": notice.revision,
        "message": _cut(notice.message, MESSAGE_CHARS),
        "actions": list(notice.actions),
        "reason": notice.reason,
        "time": notice.time,
    }


def slack_escape(text: str) -> str:
    """``text`` safe in Slack's mrkdwn: ``&``, ``<`` and ``>`` would start an entity, link or mention."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def headline(notice: Notice) -> str:
    """One line for people: which host (or every host), what happened, at which revision, and why."""
    where = notice.host or "every host"
    why = f" ({notice.reason})" if notice.reason and notice.reason != notice.event.value else ""
    return f"{where}: {notice.event.value} at {notice.revision[:12]}{why}: {notice.message}"


def slack_document(notice: Notice) -> dict[str, Any]:
    """A Slack incoming webhook's message: the headline as text (notifications, clients without
    blocks) and as one section block, the time beneath it."""
    text = f"{_SLACK_MARK[notice.event]} {slack_escape(headline(notice))}"
    return {
        "text": _cut(text, MESSAGE_CHARS),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": _cut(text, SLACK_SECTION_CHARS)}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"virt-reconcile · {notice.time}"}]},
        ],
    }


def github_status(notice: Notice) -> dict[str, str]:
    """A commit status: its state, a description within GitHub's 140 characters, and a context per
    host (``virt-reconcile/HOST``; ``virt-reconcile`` for a revision no host could use)."""
    context = f"{CONTEXT}/{notice.host}" if notice.host else CONTEXT
    description = _cut(f"{notice.event.value}: {notice.message}", DESCRIPTION_CHARS)
    return {"state": _GITHUB_STATE.get(notice.event, "error"), "description": description, "context": context}
