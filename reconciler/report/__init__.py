"""Plans and results for people (text), programs (JSON) and pull requests (markdown).

The public surface of the report layer; its modules are ``text``, ``json_doc``, ``markdown``,
``summary`` (what the three share) and ``escaping`` (values from manifests and libvirt made safe for
each format: ``escape_markup`` is what a caller printing a value through ``Printer`` should use).
"""

from reconciler.report.escaping import escape_markup, visible
from reconciler.report.json_doc import FORMAT_VERSION, plan_document, render_json
from reconciler.report.markdown import MARKDOWN_MARKER, render_markdown
from reconciler.report.summary import summary, summary_line
from reconciler.report.text import (
    Printer,
    action_title,
    plain,
    policy_line,
    render_host_text,
    render_result,
    render_text,
    wants_color,
)

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
    "summary",
    "summary_line",
    "visible",
    "wants_color",
]
