"""The read-only dashboard at ``GET /``: the ``/status`` document rendered as one HTML page.

Pure (a document in, HTML bytes out) and server-rendered: inline CSS, no script, a meta refresh that
reloads the page every few seconds. It shows only what ``/status`` shows, and every value from the
document is escaped, since host names, domain names and messages come from git and libvirt. Keys the
document lacks (an older daemon's, or one still starting) are shown as absent, never an error.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

from reconciler.spec.sizes import human_size

REFRESH_SECONDS = 5
#: Above this share of its limit (in percent) a rule's bar turns amber; above the limit, red.
NEAR_LIMIT_PERCENT = 85
#: A host's domain table starts folded when it has more rows than this.
FOLDED_ABOVE = 30
HISTORY_ROWS = 50
ACTIONS_SHOWN = 4
MESSAGE_SHOWN = 160  # characters of a pass's message in the history table
#: Problems first, then what waits, then what is fine (anything unknown sorts with the problems).
SYNC_ORDER = ("error", "refused", "outOfSync", "pendingRestart", "orphan", "suspended", "synced")
SYNC_WORDS = {"outOfSync": "out of sync", "pendingRestart": "pending restart"}
RESULT_TONES = {"applied": "ok", "unchanged": "ok", "refused": "bad", "error": "bad"}
RESULT_TONES |= {"deferred": "warn", "suspended": "muted"}
SYNC_TONES = {"synced": "ok", "orphan": "warn", "pendingRestart": "warn", "outOfSync": "warn"}
SYNC_TONES |= {"suspended": "muted", "refused": "bad", "error": "bad"}
HEALTH_TONES = {"running": "ok", "paused": "warn", "shutoff": "muted", "crashed": "bad", "missing": "bad"}

STYLE = """
:root{--ok:#15803d;--warn:#b45309;--bad:#b91c1c;--muted:#57606a;--line:#d0d7de;--bg:#f6f8fa}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;
  background:#fff}
body>header{padding:.6rem 1.2rem;background:#24292f;color:#fff;display:flex;flex-wrap:wrap;
  gap:.3rem 1.5rem;align-items:baseline}
body>header h1{font-size:1.15rem;margin:0}
body>header p{margin:0;color:#d0d7de}
main{padding:1rem 1.2rem;display:grid;gap:1rem}
h2{font-size:1.05rem;margin:0}
h3{font-size:.9rem;margin:.8rem 0 .3rem;color:var(--muted);text-transform:uppercase;
  letter-spacing:.04em}
.hosts{display:grid;gap:1rem;grid-template-columns:repeat(auto-fill,minmax(27rem,1fr))}
.host,.panel{border:1px solid var(--line);border-radius:6px;padding:.8rem 1rem;background:#fff;
  min-width:0}
.host>header{display:flex;gap:.6rem;align-items:center}
.banner{border-left:4px solid var(--bad);background:#fff5f5;padding:.5rem .8rem;
  white-space:pre-wrap;margin:0}
.note{border-left:4px solid var(--warn);background:#fff8e6;padding:.35rem .7rem;margin:.5rem 0 0}
.message{white-space:pre-wrap;margin:.4rem 0 0;
  font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px;max-height:9rem;
  overflow:auto;background:var(--bg);padding:.3rem .5rem;border-radius:4px}
dl.facts{display:flex;flex-wrap:wrap;gap:.1rem 1.2rem;margin:.3rem 0 0;color:var(--muted)}
dl.facts div{display:flex;gap:.3rem}
dl.facts dt::after{content:":"}
dl.facts dd{margin:0;color:#1f2328}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.2rem .45rem;border-bottom:1px solid var(--line);vertical-align:top}
th{font-weight:600;color:var(--muted);font-size:12.5px}
table.domains{table-layout:fixed}
table.domains code{display:block;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.why{display:block;color:var(--muted);font-size:12.5px;overflow-wrap:anywhere}
td.wrap{overflow-wrap:anywhere}
table.history td{white-space:nowrap}
table.history td.wrap{white-space:normal;min-width:12rem}
.w-sync{width:8.4rem}.w-health{width:6rem}
.badge{display:inline-block;padding:0 .45rem;border-radius:1rem;font-size:12px;font-weight:600;
  border:1px solid currentColor;white-space:nowrap}
.tone-ok{color:var(--ok)}.tone-warn{color:var(--warn)}
.tone-bad{color:var(--bad)}.tone-muted{color:var(--muted)}
.policy td:first-child{white-space:nowrap;width:8rem}
.policy td.figure{white-space:normal;width:12rem;text-align:right;font-variant-numeric:tabular-nums}
meter{width:100%;height:.95rem;display:block;margin-top:.2rem}
meter::-webkit-meter-bar{background:#eaeef2;border:0;border-radius:3px;height:.95rem}
meter::-webkit-meter-optimum-value{background:var(--ok)}
meter::-webkit-meter-suboptimum-value{background:#d97706}
meter::-webkit-meter-even-less-good-value{background:var(--bad)}
meter:-moz-meter-optimum::-moz-meter-bar{background:var(--ok)}
meter:-moz-meter-sub-optimum::-moz-meter-bar{background:#d97706}
meter:-moz-meter-sub-sub-optimum::-moz-meter-bar{background:var(--bad)}
details>summary{cursor:pointer;margin:.8rem 0 .3rem;font-weight:600;color:var(--muted)}
ul.plain{margin:.2rem 0;padding-left:1.2rem}
.empty{color:var(--muted);font-style:italic;margin:.3rem 0}
"""
#: The one inline stylesheet's hash, so the Content-Security-Policy can allow it and nothing else.
STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src '{STYLE_HASH}'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def render(document: Mapping[str, Any], refresh: int = REFRESH_SECONDS) -> bytes:
    """The whole page for a ``/status`` document, UTF-8 encoded."""
    hosts = _mapping(document.get("hosts"))
    parts = [
        _head(refresh),
        _top(document, len(hosts)),
        "<main>",
        _banners(document),
        _in_progress(_records(document.get("inProgress"))),
        '<section class="hosts" aria-label="Hosts">',
        *(_host(str(name), _mapping(host)) for name, host in hosts.items()),
        "" if hosts else '<p class="empty">No host reported yet.</p>',
        "</section>",
        _history(_records(document.get("history"))),
        "</main></body></html>\n",
    ]
    return "".join(parts).encode()


# ------------------------------------------------------------------ tolerant reading of the document


def _mapping(value: object) -> Mapping[str, Any]:
    """``value`` when it is a JSON object, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def _records(value: object) -> list[Mapping[str, Any]]:
    """The JSON objects of a list (anything else in it, or a non-list, is skipped)."""
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _strings(value: object) -> list[str]:
    """A list's items as text (a non-list is no items)."""
    return [str(item) for item in value] if isinstance(value, list) else []


def _text(record: Mapping[str, Any], key: str) -> str:
    """One field as text ("" when absent or null)."""
    value = record.get(key)
    return "" if value is None else str(value)


def _number(value: object) -> int | None:
    """A JSON number as an int (None for anything else, booleans included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


# ------------------------------------------------------------------ small pieces


def _e(text: object) -> str:
    """Text made safe for HTML content and quoted attributes."""
    return escape(str(text), quote=True)


def _badge(word: str, tone: str, label: str = "", title: str = "") -> str:
    """A coloured word (the word itself carries the meaning: colour only repeats it)."""
    shown = label or word or "unknown"
    hint = f' title="{_e(title)}"' if title else ""
    return f'<span class="badge tone-{tone}" data-state="{_e(word)}"{hint}>{_e(shown)}</span>'


def _revision(revision: str) -> str:
    """A revision cut to 12 characters, the whole one in its title."""
    if not revision:
        return '<span class="tone-muted">none</span>'
    return f'<code title="{_e(revision)}">{_e(revision[:12])}</code>'


def _time(iso: str) -> str:
    """An ISO time, readable, the machine value kept in ``datetime``."""
    if not iso:
        return '<span class="tone-muted">never</span>'
    shown = iso.replace("T", " ").removesuffix("+00:00")
    return f'<time datetime="{_e(iso)}">{_e(shown)}</time>'


def _facts(*pairs: tuple[str, str]) -> str:
    """A row of ``term: value`` facts (values already HTML)."""
    items = "".join(f"<div><dt>{_e(term)}</dt><dd>{value}</dd></div>" for term, value in pairs)
    return f'<dl class="facts">{items}</dl>'


# ------------------------------------------------------------------ the page's parts


def _head(refresh: int) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="refresh" content="{max(1, int(refresh))}">'
        f"<title>virt-reconcile</title><style>{STYLE}</style></head><body>"
    )


def _top(document: Mapping[str, Any], host_count: int) -> str:
    """The header: what the daemon reconciled last and where its manifests come from."""
    source = _mapping(document.get("source"))
    return (
        "<header><h1>virt-reconcile</h1>"
        f"<p>{host_count} host{'s' if host_count != 1 else ''}</p>"
        f"<p>reconciled {_revision(_text(document, 'reconciledRevision'))}</p>"
        f"<p>source {_revision(_text(source, 'revision'))} fetched {_time(_text(source, 'time'))}</p>"
        "</header>"
    )


def _banners(document: Mapping[str, Any]) -> str:
    """The revision's and the source's errors, above everything else."""
    banners = []
    revision_error = _text(document, "revisionError")
    if revision_error:
        banners.append(f"Revision not applied: {revision_error}")
    source_error = _text(_mapping(document.get("source")), "message")
    if source_error:
        banners.append(f"Source: {source_error}")
    return "".join(f'<p class="banner" role="alert">{_e(text)}</p>' for text in banners)


def _in_progress(passes: list[Mapping[str, Any]]) -> str:
    """The passes running now, one line each (nothing when none is)."""
    if not passes:
        return ""
    items = "".join(
        f"<li>{_e(', '.join(_strings(run.get('hosts'))) or 'no host')} at "
        f"{_revision(_text(run, 'revision'))} ({_e(_text(run, 'trigger') or 'unknown trigger')}), "
        f"started {_time(_text(run, 'started'))}</li>"
        for run in passes
    )
    return (
        '<section class="panel" aria-labelledby="in-progress">'
        f'<h2 id="in-progress">In progress</h2><ul class="plain">{items}</ul></section>'
    )


def _host(name: str, host: Mapping[str, Any]) -> str:
    """One host's card: result, revisions, message, notes, policy bars, domains."""
    result = _text(host, "result") or "pending"
    parts = [
        f'<article class="host" data-host="{_e(name)}" aria-label="Host {_e(name)}">',
        f"<header><h2>{_e(name)}</h2>{_badge(result, RESULT_TONES.get(result, 'warn'))}</header>",
        _facts(
            ("revision", _revision(_text(host, "revision"))),
            ("applied", _revision(_text(host, "appliedRevision"))),
            ("at", _time(_text(host, "time"))),
        ),
    ]
    message = _text(host, "message")
    if message:
        parts.append(f'<pre class="message">{_e(message)}</pre>')
    parts.append(_host_notes(host))
    parts.append(_policy(_records(host.get("policy")), refused=result == "refused"))
    parts.append(_pending_restarts(_strings(host.get("pendingRestarts"))))
    parts.append(_domains(_mapping(host.get("domains"))))
    parts.append("</article>")
    return "".join(parts)


def _host_notes(host: Mapping[str, Any]) -> str:
    """Why a host's changes wait: a suspend annotation, or a time outside its sync windows."""
    notes = []
    if host.get("suspended") is True:
        notes.append("Suspended: its changes are not applied until the annotation is removed.")
    deferred = _text(host, "deferred")
    if deferred:
        notes.append(f"Deferred: {deferred}")
    return "".join(f'<p class="note" data-note="host">{_e(note)}</p>' for note in notes)


def _policy(rules: list[Mapping[str, Any]], *, refused: bool) -> str:
    """Each policy rule's usage against its limit, as a bar with its figures beside it (``refused``:
    the host's last plan was refused, so a rule it breaks was the reason)."""
    if not rules:
        return ""
    rows = "".join(_policy_row(rule, refused=refused) for rule in rules)
    return (
        '<h3>Capacity</h3><table class="policy"><thead><tr><th scope="col">rule</th>'
        '<th scope="col">usage</th><th scope="col">of the limit</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )


def _policy_row(rule: Mapping[str, Any], *, refused: bool = True) -> str:
    """One rule: a ``<meter>`` of the usage now (green, amber near the limit, red over it) and its
    figures in text, with the usage the last plan leads to when it differs (``planned``: a plan not
    applied yet, refused or waiting); a rule that plan breaks (``ok`` false) says so beside them:
    ``refused`` when the host refused it, ``over limit`` when its policy only warns."""
    name = _text(rule, "rule") or "?"
    unit = _text(rule, "unit")
    usage, limit = _number(rule.get("usage")), _number(rule.get("limit"))
    if usage is None or limit is None:
        return f'<tr><td><code>{_e(name)}</code></td><td colspan="2" class="tone-muted">not known</td></tr>'
    near = max(limit, 0) * NEAR_LIMIT_PERCENT // 100
    level = "over" if usage > limit else "near" if usage > near else "ok"
    figure = f"{_amount(usage, limit, unit)} ({_percent(usage, limit)})"
    planned = _number(rule.get("planned"))
    if planned is not None and planned != usage:
        figure += f"; planned {_amount(planned, None, unit)} ({_percent(planned, limit)})"
    words = {"over": "over the limit", "near": "near the limit", "ok": "within the limit"}[level]
    meter = (
        f'<meter min="0" max="{max(limit, usage, 1)}" low="{near}" high="{max(limit, 0)}" optimum="0" '
        f'value="{max(usage, 0)}" title="{_e(name)}: {_e(figure)}, {words}">{_e(figure)}</meter>'
    )
    tone = {"over": "bad", "near": "warn", "ok": "ok"}[level]
    broken = ""
    if rule.get("ok") is False and refused:
        broken = " " + _badge("refused", "bad", title="the last revision would take it past its limit")
    elif rule.get("ok") is False:
        broken = " " + _badge("over", "warn", "over limit", "the last revision takes it past its limit")
    return (
        f'<tr class="level-{level}" data-rule="{_e(name)}"><td><code>{_e(name)}</code></td>'
        f'<td>{meter}</td><td class="figure tone-{tone}" title="{words}">{_e(figure)}{broken}</td></tr>'
    )


def _amount(usage: int, limit: int | None, unit: str) -> str:
    """``usage / limit`` in the rule's unit (sizes for bytes); ``usage`` alone without a limit."""
    if unit == "bytes":
        shown = human_size(usage)
        return shown if limit is None else f"{shown} / {human_size(limit)}"
    return (f"{usage} {unit}" if limit is None else f"{usage} / {limit} {unit}").rstrip()


def _percent(usage: int, limit: int) -> str:
    """``usage`` as a share of ``limit`` (a dash when the limit is 0 or less)."""
    return f"{usage / limit:.0%}" if limit > 0 else "—"


def _pending_restarts(names: list[str]) -> str:
    """The running domains whose new definition waits for a restart."""
    if not names:
        return ""
    items = "".join(f"<li><code>{_e(name)}</code></li>" for name in names)
    return f'<h3>Pending restarts</h3><ul class="plain pending">{items}</ul>'


def _domains(domains: Mapping[str, Any]) -> str:
    """The host's domains, problems first; a long table starts folded."""
    if not domains:
        return ""
    rows = sorted(((str(name), _mapping(entry)) for name, entry in domains.items()), key=_domain_order)
    unsynced = sum(1 for _, entry in rows if _text(entry, "sync") != "synced")
    body = "".join(_domain_row(name, entry) for name, entry in rows)
    summary = (
        f"Domains: {len(rows)}, {unsynced} not synced" if unsynced else f"Domains: {len(rows)}, all synced"
    )
    opened = " open" if len(rows) <= FOLDED_ABOVE else ""
    return (
        f'<details class="domains"{opened}><summary>{_e(summary)}</summary>'
        '<table class="domains"><thead><tr><th scope="col">domain</th>'
        '<th scope="col" class="w-sync">sync</th><th scope="col" class="w-health">health</th>'
        "</tr></thead>"
        f"<tbody>{body}</tbody></table></details>"
    )


def _domain_order(row: tuple[str, Mapping[str, Any]]) -> tuple[int, str]:
    """Sort key: by how much the sync state needs a look, then by name."""
    name, entry = row
    sync = _text(entry, "sync")
    return (SYNC_ORDER.index(sync) if sync in SYNC_ORDER else 0, name)


def _domain_row(name: str, entry: Mapping[str, Any]) -> str:
    """A domain's name with its message under it, its sync state and its health."""
    sync, health, message = _text(entry, "sync"), _text(entry, "health"), _text(entry, "message")
    sync_badge = _badge(sync, SYNC_TONES.get(sync, "warn"), SYNC_WORDS.get(sync, sync))
    health_badge = _badge(health, HEALTH_TONES.get(health, "muted"))
    why = f'<span class="why">{_e(message)}</span>' if message else ""
    return (
        f'<tr data-domain="{_e(name)}" data-sync="{_e(sync)}"><td><code title="{_e(name)}">{_e(name)}'
        f"</code>{why}</td><td>{sync_badge}</td><td>{health_badge}</td></tr>"
    )


def _history(passes: list[Mapping[str, Any]]) -> str:
    """The last passes, newest first."""
    heading = '<section class="panel" aria-labelledby="history"><h2 id="history">Last passes</h2>'
    if not passes:
        return heading + '<p class="empty">No pass recorded yet.</p></section>'
    rows = "".join(_history_row(run) for run in passes[:HISTORY_ROWS])
    return (
        heading + '<table class="history"><thead><tr><th scope="col">time</th><th scope="col">hosts</th>'
        '<th scope="col">revision</th><th scope="col">trigger</th><th scope="col">result</th>'
        '<th scope="col">actions</th><th scope="col">duration</th><th scope="col">message</th></tr>'
        f"</thead><tbody>{rows}</tbody></table></section>"
    )


def _history_row(run: Mapping[str, Any]) -> str:
    result = _text(run, "result")
    message = _text(run, "message")
    count = _number(run.get("count"))
    repeated = f" ×{count}" if count is not None and count > 1 else ""
    since = f"{count} passes since {_text(run, 'first')}" if repeated else ""
    duration = run.get("duration")
    seconds = (
        f"{duration:.2f} s" if isinstance(duration, int | float) and not isinstance(duration, bool) else ""
    )
    return (
        f'<tr data-result="{_e(result)}"><td>{_time(_text(run, "time"))}</td>'
        f"<td>{_e(', '.join(_strings(run.get('hosts'))))}</td><td>{_revision(_text(run, 'revision'))}</td>"
        f"<td>{_e(_text(run, 'trigger'))}</td>"
        f"<td>{_badge(result, RESULT_TONES.get(result, 'warn'), result + repeated, since)}</td>"
        f'<td class="wrap">{_actions(_strings(run.get("actions")))}</td><td>{_e(seconds)}</td>'
        f'<td class="wrap" title="{_e(message)}">{_e(_cut(message))}</td></tr>'
    )


def _cut(text: str, limit: int = MESSAGE_SHOWN) -> str:
    """``text`` up to ``limit`` characters (the whole of it goes in a title)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _actions(actions: Iterable[str]) -> str:
    """A pass's first few actions, the count of the rest, all of them in the title."""
    every = list(actions)
    if not every:
        return '<span class="tone-muted">none</span>'
    shown = ", ".join(every[:ACTIONS_SHOWN])
    more = f" and {len(every) - ACTIONS_SHOWN} more" if len(every) > ACTIONS_SHOWN else ""
    return f'<span title="{_e(", ".join(every))}">{_e(shown + more)}</span>'
