"""Plan output for people: symbols, before → after, colour only where it belongs."""

import io
import sys

from rich.markup import RE_TAGS, escape

import reconciler.report
from reconciler.engine.actions import Action, ActionKind, Orphan, Phase
from reconciler.engine.diff import Change
from reconciler.engine.plan import HostPlan, Plan
from reconciler.report import Printer, plain, render_text, summary_line, wants_color
from reconciler.report.printer import TAGS


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def sample_plan() -> Plan:
    actions = [
        Action(
            ActionKind.BALLOON,
            "hv1",
            "web[1]",
            Phase.BALLOON_DOWN,
            changes=(Change("currentMemory", "2GiB", "1GiB"),),
        ),
        Action(
            ActionKind.UPDATE, "hv1", "db", Phase.UPDATE_GROW, changes=(Change("vcpus", 2, 4),), restart=True
        ),
    ]
    orphans = (Orphan("hv1", "old", running=True, delete=False),)
    host = HostPlan("hv1", "qemu:///system", actions=tuple(actions), orphans=orphans)
    return Plan(hosts={"hv1": host})


def test_text_plan_shows_symbols_changes_and_summary():
    out = io.StringIO()
    render_text(sample_plan(), Printer(out, color=False))
    text = out.getvalue()
    assert "  ~ balloon web[1]\n      currentMemory: 2GiB → 1GiB\n" in text
    assert "  ~ update db  (restart needed)\n      vcpus: 2 → 4\n" in text
    assert "! orphan old: managed but no longer in git; kept" in text
    counts = "0 to define, 1 to update, 1 to balloon, 0 to start, 0 to stop, 0 to undefine"
    assert text.rstrip().endswith(f"Plan: {counts}. 1 orphan(s) kept.")
    assert "\x1b[" not in text


def test_summary_when_nothing_changes():
    assert (
        summary_line(Plan(hosts={"hv1": HostPlan("hv1", "x")}))
        == "No changes: every host matches the manifests."
    )


def test_colour_only_on_a_terminal_and_no_color_wins(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert wants_color(Terminal()) and not wants_color(io.StringIO())
    terminal = Terminal()
    render_text(sample_plan(), Printer(terminal))
    assert "\x1b[" in terminal.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    assert not wants_color(Terminal())
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert wants_color(io.StringIO())


def test_plain_strips_markup_but_keeps_escaped_brackets():
    assert plain(f"[bold]{escape('vm[1] [red]')}[/bold] [dim](0.1s)[/dim]") == "vm[1] [red] (0.1s)"


def test_plain_finds_tags_with_rich_s_own_pattern():
    """The printer's copy of rich's tag pattern (plain text does not import rich) is rich's."""
    assert (TAGS.pattern, TAGS.flags) == (RE_TAGS.pattern, RE_TAGS.flags)


def test_every_public_report_name_loads_from_its_module():
    for name in reconciler.report.__all__:
        value = getattr(reconciler.report, name)
        module = sys.modules[f"reconciler.report.{reconciler.report._MODULES[name]}"]
        assert getattr(module, name) is value, name
    assert set(reconciler.report._MODULES) == set(reconciler.report.__all__)
