"""Whose domain is it: the manifest root recorded in a domain's ownership against the one a plan
loaded (pure).

A root is ``git:REPOSITORY:FOLDER`` or ``dir:/ABSOLUTE/FOLDER`` (see the git adapter). A plan that
loaded a subfolder of the tree that defined a domain, or a single file (root unknown), may change
the domain but never takes its ownership over and never prunes it; a plan of another root neither
changes nor prunes it.
"""

from __future__ import annotations

from enum import StrEnum

from reconciler.spec.models import Owner


class Relation(StrEnum):
    """How the root a plan loaded relates to the root recorded in a domain's ownership."""

    SAME = "same"  # this plan loaded the tree that owns the domain
    PART = "part"  # a subfolder of that tree, or a single file (root unknown): change, never prune
    UNRECORDED = "unrecorded"  # ownership from an older version: no root to compare
    OTHER = "other"  # another tree: hands off


def relation(recorded: str, loaded: str) -> Relation:
    """How ``loaded`` (the plan's root, "" when a single file was loaded) relates to ``recorded``."""
    if not recorded:
        return Relation.UNRECORDED
    if not loaded:
        return Relation.PART
    if recorded == loaded:
        return Relation.SAME
    return Relation.PART if _within(loaded, recorded) else Relation.OTHER


def _within(inner: str, outer: str) -> bool:
    """Whether root ``inner`` is a folder inside root ``outer`` (same repository or file system)."""
    kind, _, rest = outer.partition(":")
    inner_kind, _, inner_rest = inner.partition(":")
    if kind != inner_kind:
        return False
    if kind == "git":
        repository, _, folder = rest.rpartition(":")
        inner_repository, _, inner_folder = inner_rest.rpartition(":")
        if repository != inner_repository:
            return False
        rest, inner_rest = folder, inner_folder
    if rest in ("", "."):
        return True
    return inner_rest == rest or inner_rest.startswith(rest.rstrip("/") + "/")


def owner_to_write(found: Owner | None, wanted: Owner) -> Owner:
    """The ownership a redefine writes: what the plan wants, but keeping the recorded root when the
    plan loaded only part of that tree (a single file or a subfolder), and the digest of the seed
    last uploaded (a reseed records its own, once its upload is done)."""
    if found is None:
        return wanted
    if found.seed != wanted.seed:
        wanted = wanted.model_copy(update={"seed": found.seed})
    if relation(found.root, wanted.root) is not Relation.PART:
        return wanted
    return wanted.model_copy(update={"root": found.root})
