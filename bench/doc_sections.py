"""Sections of docs/benchmarks.md that each benchmark rewrites on its own, keeping the others.

A section lies between ``<!-- bench: NAME -->`` and ``<!-- /bench: NAME -->``; a section not in the
file yet is added at its end.
"""

from __future__ import annotations

import re
from pathlib import Path


def write_section(path: Path, name: str, text: str) -> None:
    """Put ``text`` as section ``name`` of the markdown file at ``path`` (created when missing)."""
    block = f"<!-- bench: {name} -->\n{text.strip()}\n<!-- /bench: {name} -->\n"
    old = path.read_text() if path.exists() else ""
    pattern = re.compile(rf"<!-- bench: {re.escape(name)} -->\n.*?<!-- /bench: {re.escape(name)} -->\n", re.S)
    if pattern.search(old):
        new = pattern.sub(lambda _match: block, old)
    else:
        new = (old.rstrip() + "\n\n" if old.strip() else "") + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)
