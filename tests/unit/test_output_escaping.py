"""Hostile values in every field of a plan: the text, markdown and JSON plans show them, never obey them.

A pull request's author is not trusted, and libvirt's XML holds whatever another tool wrote. The plan
here is built by hand (domain names bypass the manifest models) with a drawn string in every field a
value from a manifest or from libvirt reaches, and compared with the same plan holding a harmless
``v<i>v`` in each: whatever the strings, the output has the same lines and the same markdown
structure, and shows every value as it is, its control characters written as escapes.
"""

from __future__ import annotations

import functools
import io
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from markdown_it.token import Token
from rich.errors import MarkupError
from rich.markup import render as rich_render

from reconciler.engine.actions import Action, ActionKind, Conflict, Held, Orphan, Phase
from reconciler.engine.apply import ActionResult
from reconciler.engine.diff import Change
from reconciler.engine.plan import HostPlan, Plan
from reconciler.engine.policy import PolicyReport, RuleResult
from reconciler.report import (
    MARKDOWN_MARKER,
    Printer,
    plain,
    render_json,
    render_markdown,
    render_result,
    render_text,
)
from reconciler.report.escaping import escape_markup, md_code, md_text, visible

# What a terminal acts on or a reader cannot see, newlines aside: C0, DEL, C1, bidi controls.
RAW_CONTROL = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
SGR = re.compile("\x1b\\[[0-9;]*m")  # rich's own colours: the only escape sequences let through
# CommonMark with GitHub's tables and strikethrough (GitHub's own renderer is cmark-gfm).
MD = MarkdownIt("commonmark").enable(["table", "strikethrough"])

NASTY = [
    "\r", "\n", "\t", "\x1b", "\x1b[2K", "\x1b]8;;https://evil\x07", "\x00", "\x7f", "\x85", "\x9b",
    "\u202e", "\u2066", "\u2028", "[", "]", "[red]", "[/]", "[link=https://evil]", "\\", "\\\\\\",
    "`", "```", "````", "|", "<", ">", "&", "&#x202e;", "</details>", "<details>", "<!--", "*", "_",
    "~~", "$", "#", "### ", "- ", "> ", "1. ", "](https://evil)", "![x](https://evil/p.png)", ":", " ",
]  # fmt: skip
hostile = st.lists(st.one_of(st.characters(), st.sampled_from(NASTY)), max_size=10).map("".join)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------------- the plan


def busy_host(v: Callable[[], str], name: str, enforcement: str) -> HostPlan:
    """A host with every kind of action and finding, and a policy with a violation.

    Field names keep their shape (a define groups ``disks[...]`` fields into a line of their own)
    and reasons are never empty (an empty one prints no note), so that what is printed has the
    same lines and blocks whatever the strings.
    """
    rules = tuple(
        RuleResult(rule + v(), unit, 4, 9, 9, 8, v(), raised=True, contributors=((v(), 2), (v(), 1)))
        for rule, unit in (("cpu.total", "vCPUs"), ("memory.commit", "bytes"))
    )
    actions = (
        Action(
            ActionKind.DEFINE,
            name,
            v(),
            Phase.DEFINE,
            changes=(Change("vcpus", None, v()), Change(f"disks[{v()}].path", None, v())),
        ),
        Action(
            ActionKind.UPDATE,
            name,
            v(),
            Phase.UPDATE_GROW,
            changes=(Change(v(), v(), v()), Change(v(), 1, None)),
            restart=True,
            reason=v() or "-",
        ),
        Action(
            ActionKind.BALLOON,
            name,
            v(),
            Phase.BALLOON_DOWN,
            changes=(Change(v(), v(), v()),),
            reason=v() or "-",
        ),
        Action(ActionKind.START, name, v(), Phase.START, changes=(Change("state", v(), v()),)),
        Action(ActionKind.STOP, name, v(), Phase.STOP, changes=(Change("state", v(), v()),)),
        Action(ActionKind.UNDEFINE, name, v(), Phase.UNDEFINE, reason=v() or "-", stop_first=True),
        Action(ActionKind.MOVE, name, v(), Phase.UNDEFINE, reason=v() or "-", peer=v()),
        Action(
            ActionKind.MOVE,
            name,
            v(),
            Phase.DEFINE,
            changes=(Change("memory", None, v()),),
            reason=v() or "-",
            xml="<domain/>",
            peer=v(),
        ),
    )
    return HostPlan(
        name,
        v(),
        actions=actions,
        orphans=(
            Orphan(name, v(), running=True, delete=False, reason=v() or "-"),
            Orphan(name, v(), False, True, v()),
        ),
        conflicts=(Conflict(name, v(), v()),),
        errors=(v(), v()),
        held=(Held(name, v(), v()),),
        warnings=(v(),),
        unchecked=(v(),),
        policy=PolicyReport(enforcement, rules),
    )


def make_plan(v: Callable[[], str]) -> Plan:
    """The same plan whatever ``v`` returns: a host refused, one over the limit under ``warn``, one
    with nothing to do. The first three strings name the hosts."""
    names = [v(), v(), v()]
    hosts = [busy_host(v, names[0], "enforce"), busy_host(v, names[1], "warn"), HostPlan(names[2], v())]
    return Plan(revision=v(), hosts={host.host: host for host in hosts})


@st.composite
def plans(draw: st.DrawFn) -> tuple[Plan, list[str]]:
    """A hostile plan and its strings, in the order ``make_plan`` asks for them (``benign`` holds
    ``v<i>v`` where this holds ``strings[i]``)."""
    names = draw(st.lists(hostile, min_size=3, max_size=3, unique=True))  # they key the plan's hosts
    strings: list[str] = []

    def v() -> str:
        strings.append(names[len(strings)] if len(strings) < len(names) else draw(hostile))
        return strings[-1]

    plan = make_plan(v)
    # Shown only when there is one, to 12 characters (a commit id): what this plan shows is all of it.
    plan.revision = strings[-1] = strings[-1][:12] or "0"
    return plan, strings


@functools.cache
def benign() -> Plan:
    """The same plan with ``v<i>v`` for ``strings[i]``: nothing to escape."""
    counter = iter(range(10_000))
    return make_plan(lambda: f"v{next(counter)}v")


@functools.cache
def benign_text() -> str:
    return text_of(benign(), color=False)


@functools.cache
def benign_markdown() -> list[Token]:
    return MD.parse(render_markdown(benign()))


def shown(rendered_benign: str, count: int) -> list[int]:
    """Which of the plan's strings a format shows (some fields are in JSON only, like ``peer``)."""
    return [i for i in range(count) if f"v{i}v" in rendered_benign]


def text_of(plan: Plan, *, color: bool) -> str:
    out = io.StringIO()
    render_text(plan, Printer(out, color=color))
    return out.getvalue()


# ----------------------------------------------------------------------------------- text


@SETTINGS
@given(plans())
def test_text_plan_holds_no_control_character_in_colour_or_not(drawn: tuple[Plan, list[str]]) -> None:
    """No raw control character, ESC or bidi override reaches the terminal, colour or not; no value
    adds a line; and colour shows exactly the characters the plain output does."""
    plan, _ = drawn
    text, coloured = text_of(plan, color=False), SGR.sub("", text_of(plan, color=True))
    assert not RAW_CONTROL.search(text)
    assert not RAW_CONTROL.search(coloured)  # ESC included: only rich's colours were removed
    assert coloured == text
    assert text.count("\n") == benign_text().count("\n")


@SETTINGS
@given(plans())
def test_text_plan_shows_every_value_as_it_is(drawn: tuple[Plan, list[str]]) -> None:
    """Every value is printed whole: nothing hidden by markup, no backslash lost or added."""
    plan, strings = drawn
    text = text_of(plan, color=False)
    for i in shown(benign_text(), len(strings)):
        assert visible(strings[i]) in text


def test_a_disk_path_cannot_rewrite_the_line_it_is_on() -> None:
    path = "/img/ok.qcow2\r\x1b[2K  + define harmless"
    change = Change("disks[vda].path", "/img/old.qcow2", path)
    action = Action(ActionKind.UPDATE, "hv1", "web", Phase.UPDATE_GROW, changes=(change,))
    plan = Plan(hosts={"hv1": HostPlan("hv1", "qemu:///system", actions=(action,))})
    expected = "disks[vda].path: /img/old.qcow2 → /img/ok.qcow2\\r\\x1b[2K  + define harmless\n"
    assert expected in text_of(plan, color=False)
    assert expected in SGR.sub("", text_of(plan, color=True))


def test_values_side_by_side_cannot_make_a_markup_tag() -> None:
    """``rich.markup.escape`` leaves ``[x`` and ``y]`` alone; side by side they made a tag that hid
    the text between them in colour."""
    change = Change("[red", "1", "2]")
    action = Action(ActionKind.UPDATE, "hv1", "web", Phase.UPDATE_GROW, changes=(change,))
    plan = Plan(hosts={"hv1": HostPlan("hv1", "qemu:///system", actions=(action,))})
    assert "      [red: 1 → 2]\n" in SGR.sub("", text_of(plan, color=True))


@pytest.mark.parametrize("name", ["vm\\", "vm\\\\\\", "\\[bold]", "\\[1]", "[/]"])
def test_backslashes_in_a_name_neither_vanish_nor_escape_the_style_after_them(name: str) -> None:
    action = Action(ActionKind.START, "hv1", name, Phase.START, changes=(Change("state", "x", "y"),))
    plan = Plan(hosts={"hv1": HostPlan("hv1", "qemu:///system", actions=(action,))})
    assert f"  > start {name}\n" in SGR.sub("", text_of(plan, color=True))
    assert f"  > start {name}\n" in text_of(plan, color=False)


@pytest.mark.parametrize("color", [False, True])
def test_printer_shows_control_characters_a_caller_left_in(color: bool) -> None:
    """The printer's own guard, for callers that escape with ``rich.markup.escape`` only."""
    out = io.StringIO()
    Printer(out, color=color).print("a\x1b[2Jb\rc\u202ed\nnext")
    assert SGR.sub("", out.getvalue()) == "a\\x1b[2Jb\\rc\\u202ed\nnext\n"


def test_an_apply_result_shows_libvirt_error_text_escaped() -> None:
    action = Action(ActionKind.STOP, "hv1", "web", Phase.STOP)
    out = io.StringIO()
    render_result(Printer(out, color=False), ActionResult(action, False, "failed\x1b[8m: [bold]x", 0.1))
    assert out.getvalue() == "  < stop web: failed: failed\\x1b[8m: [bold]x\n"


def test_control_characters_are_written_as_python_escapes() -> None:
    assert visible("\t\n\r\x00\x1b\x7f\x85\x9b\u061c\u200f\u2028\u202a\u202e\u2066\u2069") == (
        "\\t\\n\\r\\x00\\x1b\\x7f\\x85\\x9b\\u061c\\u200f\\u2028\\u202a\\u202e\\u2066\\u2069"
    )
    assert visible("web-01 ✓ é 漢 \\x1b") == "web-01 ✓ é 漢 \\x1b"  # printable text, backslashes kept


@settings(max_examples=300)
@given(st.text(st.sampled_from("[]\\/ab= @#"), max_size=16))
def test_plain_reads_markup_as_rich_does(markup: str) -> None:
    """The plain printer strips tags and backslashes exactly where rich does, so a line shows the
    same text with colour and without."""
    try:
        expected = rich_render(markup, emoji=False).plain
    except MarkupError:
        assume(False)
    assert plain(markup) == expected


@SETTINGS
@given(hostile, hostile)
def test_escaped_values_render_as_they_are_next_to_each_other(first: str, second: str) -> None:
    markup = f"[bold]{escape_markup(first)}[/bold]{escape_markup(second)} [dim]{escape_markup(first)}[/dim]"
    assert rich_render(markup).plain == plain(markup) == f"{visible(first)}{visible(second)} {visible(first)}"


# ----------------------------------------------------------------------------------- markdown


def flat(tokens: list[Token]) -> Iterator[Token]:
    for token in tokens:
        yield token
        yield from flat(token.children or [])


def shape(tokens: list[Token]) -> list[tuple[str, str, int]]:
    """The structure of a parsed document: every token but text, with its tag and nesting."""
    return [(t.type, t.tag, t.nesting) for t in flat(tokens) if t.type != "text"]


def inline_texts(tokens: list[Token]) -> str:
    """What a reader sees outside code blocks: the text and inline code of every inline, a line each."""
    kinds = ("text", "code_inline", "html_inline")
    return "\n".join(
        "".join(c.content for c in t.children or [] if c.type in kinds) for t in tokens if t.type == "inline"
    )


@SETTINGS
@given(plans())
def test_markdown_keeps_its_structure_whatever_the_strings(drawn: tuple[Plan, list[str]]) -> None:
    """Same headings, tables, rows, cells, emphasis and blocks as the benign plan; only the marker
    and the details tags are HTML, only ``<br>`` inline HTML; the details hold one code block, and
    that is the text plan, whole."""
    plan, _ = drawn
    tokens = MD.parse(render_markdown(plan))
    assert shape(tokens) == shape(benign_markdown())
    assert sum(t.type == "heading_open" for t in tokens) == 1 + len(plan.hosts)
    assert sum(t.type == "table_open" for t in tokens) == 4  # actions and policy, on two hosts
    assert not [t for t in flat(tokens) if t.type in ("link_open", "image", "s_open", "em_open")]
    assert {t.content for t in flat(tokens) if t.type == "html_inline"} == {"<br>"}
    html = [i for i, t in enumerate(tokens) if t.type == "html_block"]
    details = ["<details><summary>Full plan</summary>\n", "</details>\n"]
    assert [tokens[i].content for i in html] == [MARKDOWN_MARKER + "\n", *details]
    inside = tokens[html[1] + 1 : html[2]]
    assert [t.type for t in inside] == ["fence"]
    assert inside[0].content == text_of(plan, color=False).rstrip() + "\n"


@SETTINGS
@given(plans())
def test_markdown_shows_every_value_as_it_is(drawn: tuple[Plan, list[str]]) -> None:
    """Outside the full plan, too, every value reads as it is: no escape shows, nothing is lost (but
    white space at the end of a line or cell, which markdown drops and a browser would not show)."""
    plan, strings = drawn
    seen = inline_texts(MD.parse(render_markdown(plan)))
    for i in shown(inline_texts(benign_markdown()), len(strings)):
        assert visible(strings[i]).strip() in seen


def test_a_path_cannot_close_the_full_plan_block() -> None:
    path = "/img/a.qcow2\n````\n</details>\n\n### approved by security\n"
    change = Change("disks[vda].path", "/img/old.qcow2", path)
    action = Action(ActionKind.UPDATE, "hv1", "web", Phase.UPDATE_GROW, changes=(change,))
    text = render_markdown(Plan(hosts={"hv1": HostPlan("hv1", "qemu:///system", actions=(action,))}))
    tokens = MD.parse(text)
    assert sum(t.type == "heading_open" for t in tokens) == 2  # the title and hv1, no "approved"
    assert "\n`````text\n" in text  # longer than the run of four inside
    html = [t.content for t in tokens if t.type == "html_block"]
    assert html == [MARKDOWN_MARKER + "\n", "<details><summary>Full plan</summary>\n", "</details>\n"]
    [fence] = [t for t in tokens if t.type == "fence"]
    assert "</details>\\n\\n### approved by security" in fence.content


def test_a_refused_host_name_stays_text_in_the_headline() -> None:
    """The busy plans have errors, whose headline names no host: a refusal's does."""
    name = "<img src=x>|**hv**[a](https://evil)"
    rules = (RuleResult("cpu.total", "vCPUs", 4, 9, 9, 8, "8", raised=True),)
    host = HostPlan(name, "qemu:///system", policy=PolicyReport("enforce", rules))
    tokens = MD.parse(render_markdown(Plan(hosts={name: host})))
    [title] = [t for t in tokens if t.type == "inline"][:1]
    assert [c.type for c in title.children or []] == ["text"]
    assert title.content.endswith("on &lt;img src=x>\\|\\*\\*hv\\*\\*[a\\](https://evil)")
    assert title.children and title.children[0].content.endswith(f"on {name}")


def test_inline_code_cannot_be_closed_early() -> None:
    assert md_code("web-01") == "`web-01`"
    assert md_code("a``b") == "```a``b```"
    assert md_code("`") == "`` ` ``"
    assert md_code(" x ") == "`  x  `"
    assert md_code("") == "` `"
    assert md_code("a|b", in_table=True) == "`a\\|b`"


def test_markdown_text_keeps_readable_values_as_they_are() -> None:
    for value in ("x86_64", "disks[vda]: path=/var/lib/a-b.qcow2", "9 → 11 vCPUs > floor(4 CPUs × 2.5)"):
        assert md_text(value) == value
    assert md_text("[a](https://evil) <img> &lt; |*_x_*| $x$ ~~s~~") == (
        "[a\\](https://evil) &lt;img> &amp;lt; \\|\\*\\_x\\_\\*\\| \\$x\\$ \\~\\~s\\~\\~"
    )


# ----------------------------------------------------------------------------------- JSON


def strings_in(document: Any) -> list[str]:
    if isinstance(document, dict):
        return [s for key, value in document.items() for s in (key, *strings_in(value))]
    if isinstance(document, list):
        return [s for item in document for s in strings_in(item)]
    return [document] if isinstance(document, str) else []


@SETTINGS
@given(plans())
def test_json_round_trips_hostile_values_in_printable_ascii(drawn: tuple[Plan, list[str]]) -> None:
    """Safe by construction: every value comes back exactly, and the text is printable ASCII
    (``ensure_ascii`` escapes control characters, DEL and bidi overrides)."""
    plan, strings = drawn
    text = render_json(plan)
    assert re.fullmatch("[ -~\n]*", text)
    found = set(strings_in(json.loads(text)))
    whole = set(strings_in(json.loads(render_json(benign()))))  # values the document holds as they are
    for i in range(len(strings)):
        if f"v{i}v" in whole:
            assert strings[i] in found
