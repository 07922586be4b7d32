"""All properties, registered on import. ``PROPERTIES`` maps id -> Property."""

from fuzzcache.properties import engine_level, prefix_hit  # noqa: F401  (engine-level, any target)
from fuzzcache.properties import hf_paths  # noqa: F401  (between a multi-path target's own paths)
from fuzzcache.properties import decode_ops, paged_ops, prefill_ops, speculative_ops, spec_distribution  # noqa: F401  (op-level)
from fuzzcache.properties import surgery_rotary, surgery_cache, surgery_bpe  # noqa: F401  (KV-cache surgery on HF models)
from fuzzcache.properties import surgery_memory  # noqa: F401  (an engine's own KV-memory ops)
from fuzzcache.properties.registry import PROPERTIES, Property, get, register, select

from fuzzcache.scenario import TraceScenario

__all__ = ["PROPERTIES", "Property", "draws_traces", "get", "register", "select"]


def draws_traces(property_id: str) -> bool:
    """Its examples are request traces: the rare paths (``fuzzcache.rare_paths``) are steered
    toward, and reported, for these properties."""
    prop = PROPERTIES.get(property_id)
    return prop is not None and prop.scenario_type is TraceScenario
