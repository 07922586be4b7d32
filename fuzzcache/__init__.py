"""fuzzcache: a property-based differential fuzzer for the KV-cache machinery of LLM inference engines."""

from fuzzcache.contract import FEATURES, Completion, EngineConfig, EngineError, Request, Target
from fuzzcache.targets import UnknownTarget, available_targets, resolve_target

__version__ = "0.1.0"
__all__ = ["FEATURES", "Completion", "EngineConfig", "EngineError", "Request", "Target", "UnknownTarget", "available_targets", "resolve_target", "__version__"]
