"""All properties, registered on import. ``PROPERTIES`` maps id -> Property."""

from fuzzcache.properties import engine_level, prefix_hit  # noqa: F401  (engine-level, any target)
from fuzzcache.properties import hf_paths  # noqa: F401  (between a multi-path target's own paths)
from fuzzcache.properties import decode_ops, paged_ops, prefill_ops, speculative_ops, spec_distribution  # noqa: F401  (op-level)
from fuzzcache.properties import surgery_rotary, surgery_cache, surgery_bpe  # noqa: F401  (KV-cache surgery on HF models)
from fuzzcache.properties import surgery_memory  # noqa: F401  (an engine's own KV-memory ops)
from fuzzcache.properties.registry import PROPERTIES, Property, get, register, select

__all__ = ["PROPERTIES", "Property", "get", "register", "select"]
