"""Target resolution: turn a name from the command line or pytest into a target object.

What the names are, and how each is built, is ``fuzzcache.targets.registry``. A target may run
in a worker process (``fuzzcache.isolation``): when asked, or when it sets ``isolate = True``.
"""

from __future__ import annotations

import os

from fuzzcache.isolation import IsolatedTarget
from fuzzcache.targets.reference import ReferenceTarget
from fuzzcache.targets.registry import (
    BUILTIN, DTYPES, ENTRY_POINT_GROUP, FAMILIES, REQUIRED_ATTRS, UnknownTarget, available_targets, build_target, check_device,
    expand_target_pattern, parse_dtype,
)

__all__ = [
    "BUILTIN", "DTYPES", "ENTRY_POINT_GROUP", "FAMILIES", "REQUIRED_ATTRS", "ReferenceTarget", "UnknownTarget", "available_targets",
    "build_target", "check_device", "expand_target_pattern", "parse_dtype", "resolve_target",
]


def resolve_target(spec: str, dtype: str | None = None, device: str | None = None, isolate: bool | None = None):
    """The target named ``spec``; a clear UnknownTarget error listing what exists otherwise.
    ``dtype`` ("fp32" | "fp16" | "bf16") and ``device`` are passed to the target's factory.
    ``isolate``: run it in a worker process (``fuzzcache.isolation.IsolatedTarget``); None: as
    the environment variable FUZZCACHE_ISOLATE says (1 or 0), else when the target sets
    ``isolate = True`` (it is built here once to read that, then again in the worker)."""
    if isolate is None and os.environ.get("FUZZCACHE_ISOLATE", "") in ("0", "1"):
        isolate = os.environ["FUZZCACHE_ISOLATE"] == "1"
    target = None if isolate else build_target(spec, dtype, device)
    if isolate or (isolate is None and getattr(target, "isolate", False) is True):
        return IsolatedTarget(spec, dtype, device)
    return target
