"""Plans and results for people (text), programs (JSON) and pull requests (markdown).

The public surface of the report layer; its modules are ``printer`` (lines in rich markup, in colour
on a terminal), ``text``, ``json_doc``, ``markdown``, ``summary`` (what the three share) and
``escaping`` (values from manifests and libvirt made safe for each format: ``escape_markup`` is what
a caller printing a value through ``Printer`` should use).

Each name is imported from its module when it is first used (PEP 562), so a command that prints a
line through ``Printer`` loads neither the plan renderers, the engine they read, nor rich. (The
counts of a plan are ``summary.summary``: as a name here, it would be the module or the function
depending on which was imported first.)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reconciler.report.escaping import escape_markup, visible
    from reconciler.report.json_doc import FORMAT_VERSION, plan_document, render_json
    from reconciler.report.markdown import MARKDOWN_MARKER, render_markdown
    from reconciler.report.printer import Printer, plain, wants_color
    from reconciler.report.summary import summary_line
    from reconciler.report.text import (
        action_title,
        policy_line,
        render_host_text,
        render_result,
        render_text,
    )

#: The module under ``reconciler.report`` that defines each public name (every name of ``__all__``).
_MODULES = {
    "FORMAT_VERSION": "json_doc",
    "MARKDOWN_MARKER": "markdown",
    "Printer": "printer",
    "action_title": "text",
    "escape_markup": "escaping",
    "plain": "printer",
    "plan_document": "json_doc",
    "policy_line": "text",
    "render_host_text": "text",
    "render_json": "json_doc",
    "render_markdown": "markdown",
    "render_result": "text",
    "render_text": "text",
    "summary_line": "summary",
    "visible": "escaping",
    "wants_color": "printer",
}

__all__ = [
    "FORMAT_VERSION",
    "MARKDOWN_MARKER",
    "Printer",
    "action_title",
    "escape_markup",
    "plain",
    "plan_document",
    "policy_line",
    "render_host_text",
    "render_json",
    "render_markdown",
    "render_result",
    "render_text",
    "summary_line",
    "visible",
    "wants_color",
]


def __getattr__(name: str) -> Any:
    """A public name, its module imported now (and the name kept here for the next use)."""
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names, loaded or not (``dir()``, completion)."""
    return sorted({*globals(), *__all__})
