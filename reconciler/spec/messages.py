"""Pydantic's validation errors as sentences for a manifest's author: what was expected, what YAML
read instead, and for an unknown field the known one it was probably meant to be."""

from __future__ import annotations

import difflib
from datetime import date
from typing import Any, get_args

from pydantic import BaseModel

from reconciler.spec.untrusted import Loc, printable

#: What a strict number or boolean field takes, by pydantic's error type.
_EXPECTED = {
    "int_type": "a whole number",
    "float_type": "a number",
    "bool_type": "true or false",
}


def validation_message(error: Any, model_type: type[BaseModel]) -> str:
    """Turn a pydantic error into a sentence for a manifest author."""
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        return "unknown field" + _suggestion(model_type, tuple(error["loc"]))
    if kind == "missing":
        return "required field is missing"
    if kind == "string_type" and isinstance(value, int | float | bool | date):
        return f"expected a string, but YAML read {value!s} as {type(value).__name__}: put it in quotes"
    if kind in _EXPECTED and isinstance(value, int | float | str | date):  # strict: never converted
        shown = str(value).lower() if isinstance(value, bool) else printable(repr(value)[:40])
        return f"expected {_EXPECTED[kind]}, but YAML read {shown} as {type(value).__name__}"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _suggestion(model_type: type[BaseModel], loc: Loc) -> str:
    """``; did you mean X?`` naming the known field closest to the unknown one at ``loc``, or ``""``.

    Computed only for a document that failed, so a clean load never pays for it.
    """
    if not loc or not isinstance(loc[-1], str):
        return ""
    owner = _model_at(model_type, loc[:-1])
    if owner is None:
        return ""
    aliases = [info.alias or name for name, info in owner.model_fields.items()]
    close = difflib.get_close_matches(loc[-1], aliases, n=1)
    return f"; did you mean {close[0]}?" if close else ""


def _model_at(model_type: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model a field path leads to (list indexes stay on the item model), or None."""
    current: type[BaseModel] | None = model_type
    for part in loc:
        if isinstance(part, int):
            continue  # an item of a tuple of models: the item model was found with the tuple
        field_type = _field_types(current).get(part) if current is not None else None
        current = _model_in(field_type)
    return current


def _field_types(model_type: type[BaseModel]) -> dict[str, Any]:
    """A model's field types by every key a manifest may use: alias, and name (populate_by_name)."""
    types = {name: info.annotation for name, info in model_type.model_fields.items()}
    types.update({info.alias: info.annotation for info in model_type.model_fields.values() if info.alias})
    return types


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field's type holds: itself, or inside Optional, Annotated or tuple[...]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None
