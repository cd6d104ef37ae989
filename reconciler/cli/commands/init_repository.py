"""``init DIR``: a new manifests repository that validates and plans at once.

It holds a sandbox host and a domain (so it works on any machine), the JSON Schemas the manifests
point editors at, a ``.gitignore`` for the sandbox's state, and a pull-request workflow that plans
against host snapshots. The templates are package data under ``reconciler/cli/templates/``.

A non-empty DIR is refused unless ``--force``; even then no existing file is replaced.
"""

from __future__ import annotations

import argparse
from importlib.resources import files
from pathlib import Path

from reconciler import __version__
from reconciler.cli.exit_codes import EXIT_OK
from reconciler.errors import ReconcilerError

#: Path in the new repository -> its template in ``reconciler/cli/templates/``.
TEMPLATES = {
    "README.md": "README.md",
    ".gitignore": "gitignore",
    ".github/workflows/plan.yml": "plan.yml",
    "manifests/hosts.yaml": "hosts.yaml",
    "manifests/domains.yaml": "domains.yaml",
}
#: Entries that do not make a folder non-empty: ``git init DIR && virt-reconcile init DIR`` works.
IGNORED = frozenset({".git"})


def run(args: argparse.Namespace) -> int:
    """Write the repository; a line per file; exit 1 (an error) for a non-empty DIR without --force."""
    root = Path(args.directory)
    _check_target(root, force=args.force)
    written, kept = write_new_files(root, repository_files())
    for path in written:
        print(f"wrote {root / path}")
    for path in kept:
        print(f"kept {root / path} (it was there already)")
    print(f"next: virt-reconcile validate {root} && virt-reconcile plan {root}")
    return EXIT_OK


def repository_files() -> dict[str, str]:
    """Every file of a new repository: path -> text."""
    from reconciler.ops.schema import render, schemas

    templates = files("reconciler.cli") / "templates"
    texts = {
        path: (templates / name).read_text(encoding="utf-8").replace("@VERSION@", __version__)
        for path, name in TEMPLATES.items()
    }
    return texts | {f"schemas/{name}": render(schema) for name, schema in schemas().items()}


def write_new_files(root: Path, texts: dict[str, str]) -> tuple[list[str], list[str]]:
    """Create each file that does not exist yet; return (written, kept). Never replaces a file."""
    written, kept = [], []
    for path, text in texts.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with target.open("x", encoding="utf-8") as file:  # "x": fails rather than replace
                file.write(text)
        except FileExistsError:
            kept.append(path)
        else:
            written.append(path)
    return written, kept


def _check_target(root: Path, *, force: bool) -> None:
    if root.exists() and not root.is_dir():
        raise ReconcilerError(f"{root} exists and is not a folder")
    present = (
        sorted(entry.name for entry in root.iterdir() if entry.name not in IGNORED) if root.exists() else []
    )
    if present and not force:
        shown = ", ".join(present[:5]) + (", …" if len(present) > 5 else "")
        raise ReconcilerError(
            f"{root} is not empty ({shown}): init writes into a new or empty folder; "
            "--force adds the files beside what is there, replacing none"
        )
