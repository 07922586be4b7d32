"""Target resolution: turn a name from the command line or pytest into a target object.

Names: ``reference``; ``mutant:<name>`` and ``hf:<arch>`` (reserved for the bug zoo and
HF transformers); an entry point in the group ``fuzzcache.targets``; or
``package.module:attr`` where attr is a target or a zero-argument callable returning one.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from fuzzcache.targets.reference import ReferenceTarget

ENTRY_POINT_GROUP = "fuzzcache.targets"
BUILTIN = {"reference": ReferenceTarget}
REQUIRED_ATTRS = ("name", "vocab_size", "max_seq_len", "features", "reference_logits", "generate")


class UnknownTarget(ValueError):
    """A target name that resolves to nothing."""


def available_targets() -> list[str]:
    """Built-in names plus installed entry points."""
    return sorted(BUILTIN) + sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def _instantiate(obj, spec: str):
    factory = isinstance(obj, type) or (callable(obj) and not hasattr(obj, "generate"))
    target = obj() if factory else obj
    missing = [a for a in REQUIRED_ATTRS if not hasattr(target, a)]
    if missing:
        raise UnknownTarget(f"target {spec!r} resolved to {target!r}, which lacks the contract's {', '.join(missing)}")
    return target


def resolve_target(spec: str):
    """The target named ``spec``; a clear UnknownTarget error listing what exists otherwise."""
    if spec in BUILTIN:
        return BUILTIN[spec]()
    for prefix in ("mutant:", "hf:"):
        if spec.startswith(prefix):
            raise UnknownTarget(f"target {spec!r}: {prefix}<name> targets are reserved and not available in this version")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == spec:
            return _instantiate(ep.load(), spec)
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UnknownTarget(f"target {spec!r}: cannot import module {module_name!r} ({exc})") from exc
        if not hasattr(module, attr):
            raise UnknownTarget(f"target {spec!r}: module {module_name!r} has no attribute {attr!r}")
        return _instantiate(getattr(module, attr), spec)
    raise UnknownTarget(
        f"unknown target {spec!r}; available: {', '.join(available_targets())}, "
        "or package.module:attr, mutant:<name>, hf:<arch>"
    )
