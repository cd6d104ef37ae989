"""Lines written in rich markup, printed in colour on a terminal and as plain text elsewhere (pure
but for the stream it is given).

Kept apart from the plan renderers, and rich imported only for colour, so that a command printing
a line or two (``validate``, an error) loads neither the engine nor rich.
"""

from __future__ import annotations

import os
import re
from typing import IO, TYPE_CHECKING

from reconciler.report.escaping import visible_lines

if TYPE_CHECKING:
    from rich.console import Console

#: A markup tag as rich finds one: ``rich.markup.RE_TAGS``, written out so that plain output does not
#: import rich (a test checks that the two patterns are the same).
TAGS = re.compile(r"""((\\*)\[([a-z#/@][^[]*?)])""", re.VERBOSE)


def plain(markup: str) -> str:
    """Rich markup without its style tags, as printed where there is no colour.

    Read the way rich reads it (``rich.markup.render``), so a line shows the same text with colour
    and without: a tag preceded by an odd run of backslashes is text, every pair of backslashes
    before a tag is one, and elsewhere a backslash before ``[`` is dropped.
    """
    parts: list[str] = []
    position = 0
    for match in TAGS.finditer(markup):
        whole, escapes = match.group(1, 2)
        parts.append(markup[position : match.start()].replace("\\[", "["))
        backslashes, escaped = divmod(len(escapes), 2)
        parts.append("\\" * backslashes + (whole[len(escapes) :] if escaped else ""))
        position = match.end()
    parts.append(markup[position:].replace("\\[", "["))
    return "".join(parts)


def wants_color(file: IO[str]) -> bool:
    """Colour only on a terminal; NO_COLOR turns it off and FORCE_COLOR on (https://no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    isatty = getattr(file, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"


class Printer:
    """Prints lines written in rich markup: through rich in colour, or as plain text.

    Plain text is written directly: a plan for thousands of domains prints in milliseconds, where
    rendering every line through rich costs about half a millisecond each.
    """

    def __init__(self, file: IO[str], *, color: bool | None = None) -> None:
        self.file = file
        use_color = wants_color(file) if color is None else color
        self._console = _console(file) if use_color else None

    def print(self, markup: str = "") -> None:
        """Print one line (or several, separated by newlines).

        Control characters other than those newlines are shown as escapes (``\\x1b``): values
        should have been escaped already (``escape_markup``), and this keeps a caller that
        forgot from letting one reach the terminal, where it could rewrite what is shown.
        """
        markup = visible_lines(markup)
        if self._console is not None:
            self._console.print(markup)
        else:
            self.file.write(plain(markup) + "\n")


def _console(file: IO[str]) -> Console:
    """A rich console on ``file``, in colour (rich is imported only here: it costs start-up time)."""
    from rich.console import Console

    return Console(file=file, highlight=False, soft_wrap=True, emoji=False, force_terminal=True)
