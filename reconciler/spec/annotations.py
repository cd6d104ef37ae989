"""Annotations: free-form notes on a Host or Domain, plus the few the reconciler itself reads.

Keys follow the label syntax (``[prefix/]name``); values are any text up to
:data:`MAX_ANNOTATION_VALUE` characters. Keys under the reconciler's own prefix are checked against
the ones it knows, so a misspelt ``virt-reconcile.dev/suspend`` is an error rather than a host that
goes on being changed. ``virt-reconcile.dev/suspend: "true"`` leaves a domain (or every domain of
a host) alone: no define, update, start, stop or undefine until it is removed or set to "false".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from pydantic import AfterValidator

from reconciler.spec.labels import label_key_problem

#: The prefix of the annotations the reconciler reads: any other key under it is a typo.
OWN_PREFIX = "virt-reconcile.dev/"
#: Leaves the annotated Domain, or every domain of the annotated Host, alone while "true".
SUSPEND = OWN_PREFIX + "suspend"
#: Each annotation the reconciler reads, with the values it takes.
KNOWN: dict[str, tuple[str, ...]] = {SUSPEND: ("true", "false")}
#: Longest annotation value: room for a note or a link, not for a document.
MAX_ANNOTATION_VALUE = 4096


def annotation_problem(key: str, value: str) -> str | None:
    """Why ``key: value`` is not a valid annotation, or None when it is one."""
    key_problem = label_key_problem(key)
    if key_problem is not None:
        return "annotation" + key_problem.removeprefix("label")
    if len(value) > MAX_ANNOTATION_VALUE:
        return f"annotation {key!r} has a value of {len(value)} characters; at most {MAX_ANNOTATION_VALUE}"
    if key.startswith(OWN_PREFIX):
        if key not in KNOWN:
            import difflib  # only for a manifest with a mistake: validating the others never loads it

            close = difflib.get_close_matches(key, KNOWN, n=1)
            hint = f"; did you mean {close[0]}?" if close else f" (known: {', '.join(KNOWN)})"
            return f"unknown annotation {key!r}{hint}"
        if value not in KNOWN[key]:
            allowed = " or ".join(f'"{choice}"' for choice in KNOWN[key])
            return f"annotation {key!r} must be {allowed}, not {value!r}"
    return None


def _checked(annotations: dict[str, str]) -> dict[str, str]:
    for key, value in annotations.items():
        problem = annotation_problem(key, value)
        if problem is not None:
            raise ValueError(problem)
    return annotations


#: The ``metadata.annotations`` field type of Host and Domain documents.
Annotations = Annotated[dict[str, str], AfterValidator(_checked)]


def suspended(annotations: Mapping[str, str]) -> bool:
    """Whether the annotations suspend their document (``virt-reconcile.dev/suspend: "true"``)."""
    return annotations.get(SUSPEND) == "true"
