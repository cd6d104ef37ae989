"""The dashboard page: the /status document rendered as HTML, escaped, tolerant, served at GET /."""

from __future__ import annotations

import base64
import hashlib
import urllib.error
import urllib.request
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import html

from reconciler.daemon.dashboard import CONTENT_SECURITY_POLICY, FOLDED_ABOVE, render
from reconciler.daemon.http import Endpoints, HttpEndpoints

HOSTILE = "<script>alert('x')</script>\"' onmouseover=\"alert(1)\" &amp; <b>bold</b>"


def page(document: dict[str, Any]) -> html.HtmlElement:
    """The rendered page, parsed as a browser would."""
    return html.fromstring(render(document))


def host(**fields: Any) -> dict[str, Any]:
    """A host entry of /status as helper code writes it today, plus ``fields``."""
    return {
        "revision": "b" * 40,
        "result": "applied",
        "appliedRevision": "b" * 40,
        "message": "",
        "time": "2025-05-01T10:00:00+00:00",
        **fields,
    }


def rule(
    name: str, usage: int, limit: int, unit: str = "vCPUs", ok: bool = True, planned: int | None = None
) -> dict[str, Any]:
    planned = usage if planned is None else planned
    return {"rule": name, "unit": unit, "usage": usage, "planned": planned, "limit": limit, "ok": ok}


def test_every_value_from_the_document_is_escaped() -> None:
    document = {
        "hosts": {
            HOSTILE: host(
                message=HOSTILE,
                revision=HOSTILE,
                deferred=HOSTILE,
                domains={HOSTILE: {"sync": HOSTILE, "health": HOSTILE, "message": HOSTILE}},
                policy=[rule(HOSTILE, 1, 2, unit=HOSTILE)],
                pendingRestarts=[HOSTILE],
            )
        },
        "source": {"revision": HOSTILE, "message": HOSTILE, "time": HOSTILE},
        "reconciledRevision": HOSTILE,
        "revisionError": HOSTILE,
        "inProgress": [{"hosts": [HOSTILE], "revision": HOSTILE, "trigger": HOSTILE, "started": HOSTILE}],
        "history": [
            {
                "time": HOSTILE,
                "hosts": [HOSTILE],
                "revision": HOSTILE,
                "trigger": HOSTILE,
                "result": HOSTILE,
                "actions": [HOSTILE],
                "message": HOSTILE,
                "duration": 1.5,
            }
        ],
    }
    text = render(document).decode()
    assert "<script" not in text and "<b>" not in text
    tree = html.fromstring(text)
    assert tree.xpath("//script | //b | //*[@onmouseover]") == []
    # The values come through as text: the host name, the domain row, the message, the banner.
    assert tree.xpath("//article/@data-host") == [HOSTILE]
    assert tree.xpath("//tr[@data-domain]/@data-domain") == [HOSTILE]
    assert tree.xpath("string(//pre[@class='message'])") == HOSTILE
    assert f"Revision not applied: {HOSTILE}" in tree.xpath("//p[@role='alert']/text()")
    assert HOSTILE in tree.xpath("//@title")  # attributes keep the value whole, quotes included


def test_the_page_loads_nothing_and_its_policy_allows_only_its_own_stylesheet() -> None:
    tree = page({"hosts": {"hv1": host(policy=[rule("cpu.total", 3, 8)])}})
    assert tree.xpath("//script | //link | //img | //iframe | //@src | //@href | //form") == []
    [style] = tree.xpath("//style/text()")
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY
    [refresh] = tree.xpath("//meta[@http-equiv='refresh']/@content")
    assert int(refresh) > 0


@pytest.mark.parametrize(
    ("usage", "limit", "level"),
    [(0, 16, "ok"), (85, 100, "ok"), (86, 100, "near"), (100, 100, "near"), (101, 100, "over"), (0, 0, "ok")],
)
def test_a_rule_bar_is_amber_near_its_limit_and_red_past_it(usage: int, limit: int, level: str) -> None:
    tree = page({"hosts": {"hv1": host(policy=[rule("cpu.total", usage, limit)])}})
    [row] = tree.xpath("//tr[@data-rule='cpu.total']")
    assert row.get("class") == f"level-{level}"
    [meter] = row.xpath(".//meter")
    assert int(meter.get("value")) == usage and int(meter.get("high")) == limit
    assert int(meter.get("max")) == max(limit, usage, 1)  # a bar past its limit is full
    # The browser colours it from the same figures: optimum below low, amber to high, red beyond.
    assert meter.get("optimum") == "0" and int(meter.get("low")) == limit * 85 // 100
    figure = row.xpath("string(td[@class and contains(@class, 'figure')])")
    assert f"{usage} / {limit} vCPUs" in figure


def test_a_memory_rule_shows_sizes_and_a_refused_rule_says_so_with_its_planned_usage() -> None:
    memory_rule = rule("memory.commit", 20 << 30, 63 << 30, unit="bytes", ok=False, planned=70 << 30)
    rules = [memory_rule, rule("cpu.total", 2, 8, planned=4)]
    tree = page({"hosts": {"hv1": host(result="refused", policy=rules)}})
    [memory] = tree.xpath("//tr[@data-rule='memory.commit']")
    assert "20GiB / 63GiB (32%); planned 70GiB (111%)" in memory.text_content()
    assert memory.get("class") == "level-ok"  # the usage held is within; the plan was what broke it
    assert memory.xpath(".//span[@data-state='refused']/@title")
    [cpu] = tree.xpath("//tr[@data-rule='cpu.total']")
    assert cpu.xpath(
        ".//span[@data-state='refused']"
    ) == [] and "2 / 8 vCPUs (25%); planned 4 vCPUs (50%)" in (cpu.text_content())


def test_a_rule_broken_under_a_warning_policy_says_over_limit_not_refused() -> None:
    tree = page({"hosts": {"hv1": host(result="applied", policy=[rule("cpu.total", 9, 8, ok=False)])}})
    [row] = tree.xpath("//tr[@data-rule='cpu.total']")
    assert row.xpath(".//span[@data-state='refused']") == []
    assert row.xpath("string(.//span[@data-state='over'])") == "over limit"
    assert "planned" not in row.text_content()  # applied: planned and usage are the same


def test_a_deferred_host_and_merged_history_entries_show_as_such() -> None:
    repeated = {
        "time": "t9",
        "hosts": ["hv1"],
        "revision": "r",
        "result": "deferred",
        "count": 12,
        "first": "t1",
    }
    tree = page({"hosts": {"hv1": host(result="deferred")}, "history": [repeated]})
    [badge] = tree.xpath("//article[@data-host='hv1']/header/span")
    assert badge.text == "deferred" and "tone-warn" in badge.get("class")
    [result] = tree.xpath("//table[@class='history']/tbody/tr/td[5]/span")
    assert result.text == "deferred ×12" and result.get("title") == "12 passes since t1"


def test_domains_show_their_states_with_the_ones_needing_a_look_first() -> None:
    domains = {
        "a-web": {"sync": "synced", "health": "running", "message": ""},
        "b-db": {"sync": "pendingRestart", "health": "running", "message": "vcpus 2 → 4 at restart"},
        "c-old": {"sync": "orphan", "health": "shutoff", "message": "not in the manifests"},
        "d-big": {"sync": "refused", "health": "missing", "message": "cpu.total"},
        "e-dead": {"sync": "error", "health": "crashed", "message": "define failed"},
        "f-held": {"sync": "suspended", "health": "paused", "message": ""},
    }
    tree = page({"hosts": {"hv1": host(domains=domains, pendingRestarts=["b-db"])}})
    rows = tree.xpath("//tr[@data-domain]")
    assert [row.get("data-domain") for row in rows] == ["e-dead", "d-big", "b-db", "c-old", "f-held", "a-web"]
    states = {row.get("data-domain"): row.xpath(".//span[@data-state]") for row in rows}
    assert [(s.get("data-state"), s.text) for s in states["b-db"]] == [
        ("pendingRestart", "pending restart"),
        ("running", "running"),
    ]
    assert "tone-bad" in states["e-dead"][1].get("class") and "tone-ok" in states["a-web"][0].get("class")
    assert "tone-warn" in states["c-old"][0].get("class")
    assert tree.xpath("//ul[contains(@class, 'pending')]/li/code/text()") == ["b-db"]
    assert tree.xpath("string(//details/summary)") == "Domains: 6, 5 not synced"
    assert tree.xpath("//details/@open") == [""]  # present: the table shows


def test_a_long_domain_table_starts_folded() -> None:
    domains = {f"vm{i:03}": {"sync": "synced", "health": "running"} for i in range(FOLDED_ABOVE + 1)}
    tree = page({"hosts": {"hv1": host(domains=domains)}})
    [details] = tree.xpath("//details")
    assert details.get("open") is None
    assert details.xpath("string(summary)") == f"Domains: {FOLDED_ABOVE + 1}, all synced"


def test_suspended_and_deferred_hosts_and_passes_in_progress_are_noted() -> None:
    document = {
        "hosts": {"hv1": host(suspended=True, deferred="outside its sync windows until 22:00")},
        "inProgress": [{"hosts": ["hv1", "hv2"], "revision": "c" * 40, "trigger": "webhook", "started": "t"}],
    }
    tree = page(document)
    notes = tree.xpath("//p[@data-note='host']/text()")
    assert len(notes) == 2 and notes[0].startswith("Suspended") and "until 22:00" in notes[1]
    [line] = tree.xpath("//section[@aria-labelledby='in-progress']//li")
    assert line.text_content().startswith("hv1, hv2 at cccccccccccc (webhook)")


def test_history_is_newest_first_capped_and_shortens_long_action_lists() -> None:
    runs = [
        {
            "time": f"t{i}",
            "hosts": ["hv1"],
            "revision": "r",
            "result": "applied",
            "actions": [],
            "duration": 0.25,
        }
        for i in range(60)
    ]
    runs[0] |= {"result": "refused", "actions": [f"define vm{i}" for i in range(7)]}
    tree = page({"history": runs})
    rows = tree.xpath("//table[@class='history']/tbody/tr")
    assert len(rows) == 50 and rows[0].get("data-result") == "refused"
    [actions] = rows[0].xpath("td[6]/span")
    assert actions.text == "define vm0, define vm1, define vm2, define vm3 and 3 more"
    assert actions.get("title").endswith("define vm6")
    assert rows[1].xpath("string(td[7])") == "0.25 s"


@pytest.mark.parametrize(
    "document",
    [
        {},
        {"hosts": {}, "source": {}, "reconciledRevision": "", "revisionError": ""},
        {"hosts": {"hv1": {"result": "pending"}}},  # today's document, before a first pass
        {"hosts": ["hv1"], "history": "none", "inProgress": {"a": 1}, "source": None},
        {"hosts": {"hv1": {"domains": ["web"], "policy": [1, {"rule": "x", "usage": True, "limit": "8"}]}}},
        {"hosts": {"hv1": {"domains": {"web": None}, "pendingRestarts": "web", "suspended": "yes"}}},
    ],
)
def test_an_empty_old_or_odd_document_still_renders_a_page(document: dict[str, Any]) -> None:
    tree = page(document)
    assert tree.xpath("string(//h1)") == "virt-reconcile"
    assert tree.xpath("//section[@aria-labelledby='history']")


def test_an_empty_document_says_nothing_is_known_yet() -> None:
    text = page({}).text_content()
    assert "No host reported yet." in text and "No pass recorded yet." in text


def _get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_get_slash_serves_the_page_from_the_status_document_with_a_strict_policy() -> None:
    status = {"hosts": {"hv<1>": host()}, "source": {}, "reconciledRevision": "r1"}
    endpoints = Endpoints(
        alive=lambda: True,
        metrics=lambda: b"",
        status=lambda: status,
        on_webhook=lambda: None,
        dashboard=render,
    )
    without = Endpoints(
        alive=lambda: True, metrics=lambda: b"", status=lambda: status, on_webhook=lambda: None
    )
    served, bare = HttpEndpoints(("127.0.0.1", 0), endpoints), HttpEndpoints(("127.0.0.1", 0), without)
    try:
        code, headers, body = _get(served.url + "/")
        assert code == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
        assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert body == render(status) and b"hv&lt;1&gt;" in body
        assert _get(served.url + "/?refresh=1")[2] == body  # a query changes nothing
        assert _get(served.url + "/", method="POST")[0] == 405
        assert _get(bare.url + "/")[0] == 404
        assert _get(bare.url + "/status")[0] == 200
    finally:
        served.close()
        bare.close()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=30,
)
KEYS = ("hosts", "source", "history", "inProgress", "revisionError", "reconciledRevision")
HOST_KEYS = ("domains", "policy", "pendingRestarts", "suspended", "deferred", "message", "result")


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    top=st.fixed_dictionaries({}, optional={key: JSON for key in KEYS}),
    hosts=st.dictionaries(
        st.text(max_size=10), st.fixed_dictionaries({}, optional={key: JSON for key in HOST_KEYS}), max_size=3
    ),
)
def test_any_json_document_renders_an_escaped_page(top: dict[str, Any], hosts: dict[str, Any]) -> None:
    document = top | ({"hosts": hosts} if hosts else {})
    tree = page(document)
    assert tree.xpath("//script | //@src | //@href") == []
    listed = hosts or (top["hosts"] if isinstance(top.get("hosts"), dict) else {})
    assert len(tree.xpath("//article[@data-host]")) == len(listed)
