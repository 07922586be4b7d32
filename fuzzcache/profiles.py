"""Hypothesis profiles: ``dev``, ``ci`` (derandomized, bounded, no deadline, no database)
and ``nightly`` (many examples, database on). Registered on import of fuzzcache's plugin."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

PROFILES = {
    "dev": dict(max_examples=20, deadline=None),
    "ci": dict(max_examples=50, deadline=None, derandomize=True, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]),
    "nightly": dict(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]),
}


def register_profiles() -> None:
    for name, kwargs in PROFILES.items():
        settings.register_profile(name, **kwargs)


register_profiles()
