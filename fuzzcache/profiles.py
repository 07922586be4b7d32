"""Hypothesis profiles: ``dev``, ``ci`` (derandomized, bounded, no deadline, no database, no
steering) and ``nightly`` (many examples, database on). Registered on import of fuzzcache's plugin.

Steering (``hypothesis.target``, fuzzcache.rare_paths) climbs toward rare paths from the
example half-way through a run's max_examples on; the ``ci`` profile's 50 examples are too few
to spend half on climbing (measured on the zoo: fewer kills), so it leaves the target phase out.
"""

from __future__ import annotations

from hypothesis import HealthCheck, Phase, settings

PROFILES = {
    "dev": dict(max_examples=20, deadline=None),
    "ci": dict(max_examples=50, deadline=None, derandomize=True, database=None, print_blob=True,
               phases=[phase for phase in Phase if phase != Phase.target],
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]),
    "nightly": dict(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]),
}


def register_profiles() -> None:
    for name, kwargs in PROFILES.items():
        settings.register_profile(name, **kwargs)


register_profiles()
