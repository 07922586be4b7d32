"""The property registry: each property has a stable id, a scenario type, a strategy and a check."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable

from hypothesis import strategies as st


@dataclass(frozen=True)
class Property:
    id: str  # stable, e.g. "engine.trace"; corpus files and --property use it
    level: str  # "engine" (any target, through the contract), "op" (the reference engine's own paths),
    # "paths" (a target with several paths of its own, compared through ``generate_via``), "surgery" (a target's ``surgery`` ops)
    # or "memory" (an engine that edits its own KV memory: ``run_memory_script``)
    description: str
    scenario_type: type
    strategy: Callable[[Any], st.SearchStrategy]  # target -> strategy of scenarios
    check: Callable[[Any, Any], None]  # (target, scenario) -> None, raises Finding
    requires: frozenset[str] = frozenset()  # target features needed
    examples: tuple = field(default=())  # explicit examples (the seeds' fixed parameters)
    example_scale: float = 1.0  # share of the profile's max_examples this property runs (an expensive one runs fewer)
    # (target, scenario, modeled bug names) -> None, raises Finding: ``check`` with an oracle that behaves as the named
    # known bugs do (fuzzcache.known_bugs); None: this property's oracle models no bug
    check_modeling: Callable[[Any, Any, frozenset[str]], None] | None = None
    variant: Callable[[Any], Any] | None = None  # a metamorphic property's second config: scenario -> EngineConfig

    def applies_to(self, target) -> bool:
        return self.unmet(target) is None

    def unmet(self, target) -> str | None:
        """Why this property cannot run on ``target`` (None when it can)."""
        if self.level == "op" and not hasattr(target, "ops"):
            return "an op-level target (with ``ops``)"
        if self.level == "paths" and not hasattr(target, "generate_via"):
            return "a target with several paths of its own (``generate_via``, e.g. hf:<arch>)"
        if self.level == "surgery":
            from fuzzcache.surgery import INSTALL_HINT, available

            if not available():
                return INSTALL_HINT
            if not hasattr(target, "surgery"):
                return "a target with ``surgery`` ops"
            if getattr(target, "surgery_architectures", None) == ():
                from fuzzcache.surgery.models import ARCHS

                return f"a model family the surgery ops have a model of ({', '.join(ARCHS)})"
        if self.level == "memory" and not hasattr(target, "run_memory_script"):
            return "an engine that edits its own KV memory (``run_memory_script``, e.g. llamacpp:<arch>)"
        if self.level == "memory" and getattr(target, "memory_unmodelled", None):
            return target.memory_unmodelled
        missing = self.requires - frozenset(getattr(target, "features", ()))
        return f"the features {sorted(missing)}" if missing else None


PROPERTIES: dict[str, Property] = {}


def register(prop: Property) -> Property:
    if prop.id in PROPERTIES:
        raise ValueError(f"property {prop.id!r} registered twice")
    PROPERTIES[prop.id] = prop
    return prop


def select(patterns: list[str] | None = None) -> list[Property]:
    """Properties whose id matches any glob in ``patterns`` (all when none); unknown patterns are an error."""
    if not patterns:
        return list(PROPERTIES.values())
    chosen = []
    for pattern in patterns:
        hits = [p for p in PROPERTIES.values() if fnmatch.fnmatchcase(p.id, pattern)]
        if not hits:
            raise ValueError(f"no property matches {pattern!r}; known: {', '.join(PROPERTIES)}")
        chosen += [p for p in hits if p not in chosen]
    return chosen


def get(prop_id: str) -> Property:
    if prop_id not in PROPERTIES:
        raise ValueError(f"unknown property {prop_id!r}; known: {', '.join(PROPERTIES)}")
    return PROPERTIES[prop_id]
