"""Scenarios: the frozen, JSON-serialisable inputs a property runs on, and their codec."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from fuzzcache.contract import EngineConfig, Request
from fuzzcache.model import ModelConfig


@dataclass(frozen=True)
class TraceScenario:
    """Engine-level input: a request trace and the engine config to run it under."""

    requests: tuple[Request, ...]
    config: EngineConfig

    def short(self) -> str:
        c = self.config
        reqs = " ".join(request_short(r) for r in self.requests)
        changed = {f.name: getattr(c, f.name) for f in dataclasses.fields(c) if getattr(c, f.name) != f.default}
        return f"{reqs} " + " ".join(f"{k}={v}" for k, v in changed.items())

    def request_ids(self) -> list[int]:
        return [r.rid for r in self.requests]

    def size_key(self) -> tuple:
        from fuzzcache.reductions import trace_size_key

        return trace_size_key(self)

    def reductions(self, target):
        """Smaller traces the contract allows on ``target`` (for ``fuzzcache.minimize``)."""
        from fuzzcache.minimize import Reduced
        from fuzzcache.reductions import trace_reductions, valid_trace

        for candidate in trace_reductions(self, target):
            if valid_trace(candidate.scenario if isinstance(candidate, Reduced) else candidate, target):
                yield candidate


def request_short(r: Request) -> str:
    """``[prompt=P new=N n=2 stop=[t] abort=S at=A]``: lengths, and the lifecycle fields that are not their defaults."""
    lifecycle = (f" n={r.n}" if r.n > 1 else "") + (" stop=[" + ",".join(map(str, r.stop)) + "]" if r.stop else "") + (
        f" abort={r.abort_at}" if r.abort_at is not None else "")
    return f"[prompt={len(r.prompt)} new={r.max_new_tokens}{lifecycle}" + (f" at={r.arrival}]" if r.arrival else "]")


def short_form(scenario: Any) -> str:
    """A scenario's one-line repro form (``short()``), for reports."""
    return scenario.short().strip() if hasattr(scenario, "short") else str(scenario)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses to dicts, tuples to lists, recursively."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
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


__all__ = ["TraceScenario", "to_jsonable", "from_jsonable", "Request", "EngineConfig", "ModelConfig"]
