r"""Values from manifests and from libvirt, made safe for the format they are printed in (pure).

A pull request's author is not trusted, and libvirt's XML holds whatever another tool wrote there,
so every such value (domain names, paths, reasons, error messages, host names, URIs, the revision,
field values) goes through one of these functions before it reaches a terminal or a comment:

* :func:`visible` shows control characters as the escapes Python writes (``\x1b``, ``\r``, ``\n``,
  ``\u202e``). Escapes rather than control pictures (U+241B ␛): they are plain ASCII, so they
  survive any font, CI log or copy and paste; they name the exact code point; and there is a
  picture for neither the C1 controls nor the bidi overrides. Backslashes themselves are left as
  they are, so paths stay readable: a value can make text look *more* suspicious, never hide any.
* :func:`escape_markup` is a value inside rich markup (the text format, in colour or not).
* :func:`md_text`, :func:`md_code` and :func:`md_fence` are a value inside markdown (pull-request
  comments): text, inline code and a fenced block.

JSON needs none of this: ``json.dumps`` escapes whatever a string holds.
"""

from __future__ import annotations

import re

# C0 (with \t \n \r and ESC), DEL and C1: category Cc. Then what reorders or breaks a line without
# being seen: the bidi marks (ALM, LRM, RLM), the line and paragraph separators, the bidi
# embeddings and overrides (U+202A-U+202E, "Trojan Source") and the bidi isolates (U+2066-U+2069).
_UNICODE = "\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_CONTROL = re.compile(f"[\x00-\x1f{_UNICODE}]")
_CONTROL_BUT_NEWLINE = re.compile(f"[\x00-\x09\x0b-\x1f{_UNICODE}]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _shown(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def visible(text: str) -> str:
    r"""``text`` with every control character and bidi override written as an escape (``\x1b``).

    What a terminal or a browser would act on, or not show at all, is shown instead: a carriage
    return cannot overwrite the start of a line, an ESC cannot recolour or clear it, a newline
    cannot forge a line of its own, and a right-to-left override cannot reverse what follows.
    """
    return _CONTROL.sub(_shown, text)


def visible_lines(text: str) -> str:
    """:func:`visible`, but for newlines: the guard for whole lines a printer is given, where a
    newline separates lines the caller wrote (values in them should have gone through
    :func:`visible` already)."""
    return _CONTROL_BUT_NEWLINE.sub(_shown, text)


# A run of backslashes before a "[" or at the end of a value: the only places rich reads them.
_MARKUP_SPECIAL = re.compile(r"(\\*)(\[|\Z)")
# An empty style: ends a run of backslashes so that it cannot escape what comes after it.
_SEPARATOR = "[dim][/dim]"


def _markup_special(match: re.Match[str]) -> str:
    backslashes, bracket = match.groups()
    head = backslashes * 2 + _SEPARATOR if backslashes else ""
    return head + ("\\[" if bracket else "")


def escape_markup(text: str) -> str:
    r"""``text`` (made :func:`visible`) for rich markup: shown as it is, whatever is next to it.

    ``rich.markup.escape`` is not enough: it escapes only a ``[`` that looks like a tag on its
    own, so ``[x`` in one value and ``y]`` in the next make a tag ``[x ... y]`` that hides all the
    text between them, and a value ending in three backslashes escapes the closing tag after it.
    Here every ``[`` is escaped, and a run of backslashes rich would read (before a ``[`` or at
    the end) is doubled and closed with an empty style, so it neither escapes what follows nor
    loses a backslash.
    """
    return _MARKUP_SPECIAL.sub(_markup_special, visible(text))


# Markdown, the least that keeps a value literal (a golden file stays readable):
# - "&" and "<" as entities: no HTML element, comment or autolink can start, and no entity
#   (&#x202e; is a bidi override) be decoded; ">" is inert once "<" is escaped.
# - "\\", "`", "*", "~", "|", "$" with a backslash: an escape, code, emphasis, strikethrough, a
#   new table cell, math.
# - "_" with a backslash unless between two letters or digits (x86_64), where CommonMark never
#   reads it as emphasis.
# - "]" with a backslash where a link or image could end: before "(" or "[", or at the end of the
#   value (what follows it is not known here). A "[" alone opens nothing, and no line can start
#   with a value, so no link reference definition can exist for "[vda]" to point to.
_MD_SPECIAL = re.compile(r"[&<\\`*~|$]|(?<![^\W_])_|_(?![^\W_])|\](?=[(\[]|\Z)")
_MD_ENTITY = {"&": "&amp;", "<": "&lt;"}


def md_text(text: str) -> str:
    """``text`` (made :func:`visible`) as literal markdown text, also inside a table cell.

    ``<`` and ``&`` become entities, so ``</details>`` or ``<img>`` is text; what could start an
    escape, code, emphasis, a link, an image, math or a new table cell gets a backslash. Newlines
    are gone (:func:`visible`), so a value cannot start a heading, list or block of its own.
    """
    return _MD_SPECIAL.sub(lambda m: _MD_ENTITY.get(m.group()) or "\\" + m.group(), visible(text))


def _longest_backtick_run(text: str) -> int:
    return max((len(run) for run in re.findall("`+", text)), default=0)


def md_code(text: str, *, in_table: bool = False) -> str:
    """``text`` (made :func:`visible`) as inline code that nothing inside can close early.

    The fence is one backtick longer than any run inside; a space pads content that starts or
    ends with a backtick or a space (CommonMark strips one from each side). In a table cell a
    ``|`` is escaped: GFM splits cells before it finds code, and removes the backslash after.
    """
    shown = visible(text) or " "  # an empty code span is no code span: show one space
    fence = "`" * (_longest_backtick_run(shown) + 1)
    pad = " " if shown.strip(" ") and (shown[0] in "` " or shown[-1] in "` ") else ""
    if in_table:
        shown = shown.replace("|", "\\|")
    return f"{fence}{pad}{shown}{pad}{fence}"


def md_fence(body: str, info: str = "text") -> list[str]:
    """``body`` as a fenced code block: the lines of the block, opening and closing fence included.

    The fence is longer than any run of backticks in ``body``, so no line of it can close the block
    (and a backtick fence is closed by backticks alone). Inside a code block nothing is markdown
    or HTML: a ``</details>`` there is text, escaped by the renderer.
    """
    fence = "`" * max(3, _longest_backtick_run(body) + 1)
    return [fence + info, body, fence]
