"""Host labels and the selectors that pick hosts by them (``--selector role=web,zone!=b``).

Labels follow Kubernetes' syntax, which operators already know: a key is an optional DNS-style
prefix and ``/`` then a name of up to 63 characters; a value is up to 63 characters or empty. A
selector is a comma-separated list of requirements, all of which must hold: ``key=value`` (also
``key==value``), ``key!=value`` (true when the label is absent too), ``key`` (present) and ``!key``
(absent).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_NAME = r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
LABEL_KEY_PATTERN = rf"^({_PREFIX}/)?{_NAME}$"
LABEL_VALUE_PATTERN = rf"^({_NAME})?$"
MAX_PREFIX = 253
_KEY = re.compile(LABEL_KEY_PATTERN)
_VALUE = re.compile(LABEL_VALUE_PATTERN)


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a label key, or None when it is one."""
    prefix = key.rpartition("/")[0]
    if _KEY.fullmatch(key) is None or len(prefix) > MAX_PREFIX:
        return (
            f"label key {key!r} is not a name of up to 63 letters, digits, '-', '_' or '.' "
            "(optionally after a DNS prefix and '/')"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a label value, or None when it is one."""
    if _VALUE.fullmatch(value) is None:
        return f"label value {value!r} is not empty or up to 63 letters, digits, '-', '_' or '.'"
    return None


@dataclass(frozen=True)
class Requirement:
    """One condition on a host's labels."""

    key: str
    operator: str  # "=", "!=", "exists", "!exists"
    value: str = ""

    def holds(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` meet this condition."""
        match self.operator:
            case "=":
                return labels.get(self.key) == self.value
            case "!=":
                return labels.get(self.key) != self.value
            case "exists":
                return self.key in labels
            case _:
                return self.key not in labels

    def __str__(self) -> str:
        if self.operator in ("=", "!="):
            return f"{self.key}{self.operator}{self.value}"
        return self.key if self.operator == "exists" else f"!{self.key}"


@dataclass(frozen=True)
class Selector:
    """Requirements that must all hold for a host to be selected."""

    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, texts: Iterable[str]) -> Selector:
        """Every requirement of the given selector texts (each comma-separated); a malformed one is
        a ``ValueError`` saying what is wrong."""
        found: list[Requirement] = []
        for text in texts:
            for part in text.split(","):
                found.append(_requirement(part.strip(), text))
        return cls(tuple(found))

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a host with ``labels`` is selected."""
        return all(requirement.holds(labels) for requirement in self.requirements)

    def __bool__(self) -> bool:
        return bool(self.requirements)

    def __str__(self) -> str:
        return ",".join(map(str, self.requirements))


def _requirement(part: str, text: str) -> Requirement:
    """One requirement from its text (``key=value``, ``key!=value``, ``key``, ``!key``)."""
    if not part:
        raise ValueError(f"selector {text!r} has an empty requirement")
    for operator in ("!=", "==", "="):
        if operator in part:
            key, _, value = part.partition(operator)
            key, value = key.strip(), value.strip()
            _check(key, value, text)
            return Requirement(key, "!=" if operator == "!=" else "=", value)
    negated = part.startswith("!")
    key = part[1:].strip() if negated else part
    _check(key, "", text)
    return Requirement(key, "!exists" if negated else "exists")


def _check(key: str, value: str, text: str) -> None:
    """Raise a ``ValueError`` naming the selector when its key or value cannot be a label's."""
    problem = label_key_problem(key) or label_value_problem(value)
    if problem is not None:
        raise ValueError(f"selector {text!r}: {problem}")
