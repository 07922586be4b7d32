"""The JSON codec of scenarios (the corpus, the minimizer's generic size): dataclasses to JSON data, and back by their type hints."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


def to_jsonable(obj: Any) -> Any:
    """Dataclasses to dicts, tuples to lists, recursively; a field marked ``omit_if_default`` is
    left out at its default (a field added later keeps every earlier file and hash as it was)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get("omit_if_default") and getattr(obj, f.name) == f.default)}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(x) for x in obj]
    return obj


def from_jsonable(cls: Any, data: Any) -> Any:
    """Rebuild a value of type ``cls`` (dataclass, tuple[...], list[...], scalar) from JSON data."""
    origin = typing.get_origin(cls)
    if dataclasses.is_dataclass(cls):
        if not isinstance(data, dict):
            raise ValueError(f"expected an object for {cls.__name__}, got {data!r}")
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)} for {cls.__name__}")
        return cls(**{k: from_jsonable(hints[k], v) for k, v in data.items()})
    if origin is tuple:
        if not isinstance(data, list):
            raise ValueError(f"expected a list, got {data!r}")
        return tuple(from_jsonable(typing.get_args(cls)[0], x) for x in data)
    if origin is list:
        if not isinstance(data, list):
            raise ValueError(f"expected a list, got {data!r}")
        return [from_jsonable(typing.get_args(cls)[0], x) for x in data]
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(cls)
        if data is None and type(None) in options:
            return None
        return from_jsonable(next(o for o in options if o is not type(None)), data)
    if cls is int and (not isinstance(data, int) or isinstance(data, bool)):
        raise ValueError(f"expected an integer, got {data!r}")
    if cls is bool and not isinstance(data, bool):
        raise ValueError(f"expected true or false, got {data!r}")
    if cls is str and not isinstance(data, str):
        raise ValueError(f"expected a string, got {data!r}")
    if cls is float and (not isinstance(data, (int, float)) or isinstance(data, bool)):
        raise ValueError(f"expected a number, got {data!r}")
    return data
