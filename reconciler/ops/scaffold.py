"""A new manifests repository (``virt-reconcile init``): its files, written without replacing any.

It holds a sandbox host and a domain (so it works on any machine), the JSON Schemas the manifests
point editors at, a ``.gitignore`` for the sandbox's state, and a pull-request workflow that plans
against host snapshots and installs virt-reconcile from the requirement it is given. The templates
are package data under ``reconciler/ops/templates/``.

A non-empty folder is refused unless ``force``; even then no existing file is replaced. Each file
is created whole or not at all (``write_atomically(..., exclusive=True)``), so a run that fails half
way leaves no partial file behind for a later ``--force`` to keep as if it were the user's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from reconciler import __version__
from reconciler.errors import ScaffoldError
from reconciler.files.atomic import write_atomically

#: Path in the new repository -> its template in ``reconciler/ops/templates/``.
TEMPLATES = {
    "README.md": "README.md",
    ".gitignore": "gitignore",
    ".github/workflows/plan.yml": "plan.yml",
    "manifests/hosts.yaml": "hosts.yaml",
    "manifests/domains.yaml": "domains.yaml",
}
#: Entries that do not make a folder non-empty: ``git init DIR && virt-reconcile init DIR`` works.
IGNORED = frozenset({".git"})
#: Where the workflow's pip requirement goes in ``plan.yml`` (as a YAML double-quoted string).
INSTALL_FROM = "@INSTALL_FROM@"


@dataclass
class Scaffolded:
    """What :func:`scaffold` did: the files it wrote and those it kept (paths inside the root)."""

    written: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def scaffold(root: Path, *, install_from: str, force: bool = False) -> Scaffolded:
    """Write a new repository into ``root``, its workflow installing ``install_from`` (a pip
    requirement); with ``force`` into a non-empty folder too, keeping every file already there."""
    check_target(root, force=force)
    return write_new_files(root, repository_files(install_from))


def repository_files(install_from: str) -> dict[str, str]:
    """Every file of a new repository: path -> text."""
    from reconciler.ops.schema import render, schemas

    if not install_from.strip() or "\n" in install_from or "${{" in install_from:
        raise ScaffoldError(
            f"--install-from {install_from!r}: a pip requirement on one line, such as "
            "'virt-reconcile @ git+https://github.com/ORG/virt-reconcile@TAG'"
        )
    templates = files("reconciler.ops") / "templates"
    texts = {
        path: (templates / name)
        .read_text(encoding="utf-8")
        .replace(INSTALL_FROM, json.dumps(install_from))  # a JSON string is a YAML one too
        .replace("@VERSION@", __version__)
        for path, name in TEMPLATES.items()
    }
    return texts | {f"schemas/{name}": render(schema) for name, schema in schemas().items()}


def write_new_files(root: Path, texts: dict[str, str]) -> Scaffolded:
    """Create each file that does not exist yet, whole (mode 0644: nothing in it is secret); an
    existing file is kept, whatever creates it meanwhile (creation is exclusive)."""
    done = Scaffolded()
    for path, text in texts.items():
        try:
            write_atomically(root / path, text, mode=0o644, exclusive=True)
        except FileExistsError:
            done.kept.append(path)
        else:
            done.written.append(path)
    return done


def check_target(root: Path, *, force: bool) -> None:
    """Refuse a ``root`` that is a file, or a non-empty folder without ``force``."""
    if root.exists() and not root.is_dir():
        raise ScaffoldError(f"{root} exists and is not a folder")
    present = (
        sorted(entry.name for entry in root.iterdir() if entry.name not in IGNORED) if root.exists() else []
    )
    if present and not force:
        shown = ", ".join(present[:5]) + (", …" if len(present) > 5 else "")
        raise ScaffoldError(
            f"{root} is not empty ({shown}): init writes into a new or empty folder; "
            "--force adds the files beside what is there, replacing none"
        )
