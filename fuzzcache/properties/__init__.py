"""All properties, registered on import. ``PROPERTIES`` maps id -> Property."""

from fuzzcache.properties import engine_level  # noqa: F401  (registers engine.*)
from fuzzcache.properties.registry import PROPERTIES, Property, get, register, select

__all__ = ["PROPERTIES", "Property", "get", "register", "select"]
