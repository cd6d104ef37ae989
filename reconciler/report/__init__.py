"""Plans and results for people (text), programs (JSON) and pull requests (markdown).

The public surface of the report layer; its modules are ``text``, ``json_doc``, ``markdown`` and
``summary`` (what the three share).
"""

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
    "wants_color",
]
