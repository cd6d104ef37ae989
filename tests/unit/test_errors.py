"""The exception tree drawn in ``reconciler/errors.py`` is the tree the classes make."""

from __future__ import annotations

import inspect
import re

from reconciler import errors

ROW = re.compile(r"^(?P<indent>[│ ├└─]*)(?P<name>\w+Error)\s+(?P<retryable>yes|no|-|retryable\?)(?=\s|$)")


def drawing() -> dict[str, tuple[str | None, str]]:
    """Each class drawn: its parent in the drawing and its retryable column."""
    drawn: dict[str, tuple[str | None, str]] = {}
    parents: list[str] = []  # the enclosing classes at each depth
    for line in (errors.__doc__ or "").splitlines():
        row = ROW.match(line.removeprefix("    "))
        if row is None:
            continue
        depth = len(row["indent"]) // 4
        del parents[depth:]
        drawn[row["name"]] = (parents[-1] if parents else None, row["retryable"])
        parents.append(row["name"])
    return drawn


def test_every_error_class_is_drawn_under_its_parent_with_its_retryable_flag():
    classes = {
        name: cls
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.ReconcilerError)
    }
    drawn = drawing()
    assert set(drawn) == set(classes), "the drawing and the classes differ"
    for name, (parent, retryable) in drawn.items():
        cls = classes[name]
        if parent is not None:
            assert cls.__bases__ == (classes[parent],), f"{name} is drawn under {parent}"
        subclasses = [c for c in classes.values() if c.__bases__ == (cls,)]
        if retryable == "retryable?":  # the root, whose row heads the column
            assert parent is None and cls is errors.ReconcilerError
        elif retryable == "-":
            assert subclasses, f"{name}: '-' is for a class whose subclasses decide"
        else:
            assert cls.retryable == (retryable == "yes"), f"{name} is drawn as retryable: {retryable}"
