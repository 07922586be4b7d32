"""Scenarios: the frozen, JSON-serialisable inputs a property runs on (the codec is ``fuzzcache.jsonable``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from fuzzcache.contract import EngineConfig, Request
from fuzzcache.jsonable import from_jsonable, to_jsonable
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


__all__ = ["TraceScenario", "to_jsonable", "from_jsonable", "Request", "EngineConfig", "ModelConfig"]
