"""The field types manifest models are built from: sizes, durations, names, strict numbers and
flags, and the base model every document shares (immutable, camelCase, unknown fields refused)."""

from __future__ import annotations

import os
import sys
import types
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel

from reconciler.spec.durations import DURATION_PATTERN, format_duration, parse_manifest_duration
from reconciler.spec.sizes import SIZE_PATTERN, format_size, parse_size

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

Size = Annotated[
    int,
    BeforeValidator(parse_size),
    PlainSerializer(format_size, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": SIZE_PATTERN, "examples": ["4GiB", "512MiB"]}),
]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


def _duration(value: object) -> float:
    """A duration string (``10s``) as seconds; a bare YAML number is refused, since its unit is a guess."""
    if not isinstance(value, str):
        raise ValueError("must be a duration string such as 10s, 500ms or 2m")
    return parse_manifest_duration(value)


Duration = Annotated[
    float,
    BeforeValidator(_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "examples": ["10s", "1m"]}),
]


def duration_between(shortest: float, longest: float) -> AfterValidator:
    """A check that a :data:`Duration` lies within its bounds (``Annotated[Duration, ...]``), saying
    them in duration units (``1h``), not as bare seconds."""

    def within(seconds: float) -> float:
        if not shortest <= seconds <= longest:
            bounds = f"{format_duration(shortest)} and {format_duration(longest)}"
            raise ValueError(f"must be between {bounds}, not {format_duration(seconds)}")
        return seconds

    return AfterValidator(within)


#: Numbers and booleans are taken as YAML wrote them: ``vcpus: true`` is not 1, ``autostart: 1`` not true.
Count = Annotated[int, Field(strict=True)]
Flag = Annotated[bool, Field(strict=True)]


def _without_plugin_discovery() -> None:
    """Pydantic looks for its plugins when it builds the first model: it imports ``importlib.metadata``
    and reads the entry points of every installed distribution, about 15 ms of a 0.2 s ``plan``.
    virt-reconcile uses none, so its models are built with a loader that finds none; pydantic's own
    switch, ``PYDANTIC_DISABLE_PLUGINS``, once set (even empty), brings back pydantic's loader."""
    name = "pydantic.plugin._loader"
    if "PYDANTIC_DISABLE_PLUGINS" in os.environ or name in sys.modules:
        return
    loader = types.ModuleType(name, "pydantic's plugin loader, which finds no plugin (see fieldtypes)")
    loader.__dict__["get_plugins"] = lambda: ()  # what pydantic calls: no plugin
    sys.modules[name] = loader


_without_plugin_discovery()  # before the first model below is built


class Model(BaseModel):
    """Base for every manifest model: immutable, camelCase, unknown fields refused."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        validate_default=True,
    )
