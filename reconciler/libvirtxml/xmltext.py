"""Values escaped for XML written as text: exactly what ``xml.sax.saxutils`` writes, faster.

A new domain's XML is written as text (:mod:`.render`, :mod:`.ownership`), a dozen values per
domain and thousands of domains per first apply. ``saxutils`` runs a chain of replacements on every
value; nearly none needs any, so a single search decides and only the rest go through ``saxutils``,
imported then: it pulls in ``urllib.request`` (with ``http`` and ``ssl``), a CLI start-up's worth
of milliseconds that a plan whose values need no escaping never pays.
"""

from __future__ import annotations

import re

#: What ``quoteattr`` changes: markup, and whitespace an attribute value would lose (a single quote
#: alone changes nothing: the value is put in double quotes either way).
_ATTRIBUTE_SPECIAL = re.compile('[&<>"\n\r\t]')
#: What ``escape`` changes in element text.
_TEXT_SPECIAL = re.compile("[&<>]")


def quoted(value: str) -> str:
    """``value`` as a quoted attribute value, as ``quoteattr`` writes it."""
    if _ATTRIBUTE_SPECIAL.search(value) is None:
        return f'"{value}"'
    from xml.sax.saxutils import quoteattr

    return quoteattr(value)


def escaped(value: str) -> str:
    """``value`` as element text, as ``escape`` writes it."""
    if _TEXT_SPECIAL.search(value) is None:
        return value
    from xml.sax.saxutils import escape

    return escape(value)
