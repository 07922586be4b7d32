"""The property tests, ready to import into any project's test suite:

    # tests/test_fuzzcache.py
    from fuzzcache.testing import test_property  # noqa: F401

then ``pytest --hypothesis-profile=ci --fuzzcache-target=pkg.mod:attr``. Each property runs
under the active Hypothesis profile; a failure is shrunk, saved to the corpus, and fails the
test with its repro. Properties that need features the target lacks are skipped, saying so.
"""

from __future__ import annotations

import pytest
from hypothesis import settings

from fuzzcache.properties import PROPERTIES
from fuzzcache.runner import run_property


@pytest.mark.parametrize("property_id", list(PROPERTIES))
def test_property(property_id, fuzzcache_target, fuzzcache_target_spec, fuzzcache_corpus):
    prop = PROPERTIES[property_id]
    unmet = prop.unmet(fuzzcache_target)
    if unmet is not None:
        pytest.skip(f"{property_id} needs {unmet}; {fuzzcache_target_spec} lacks it")
    run = run_property(prop, fuzzcache_target, fuzzcache_target_spec, settings(), fuzzcache_corpus)
    assert run.error is None, f"{property_id} could not run: {run.error}"
    assert not run.found, "\n".join(f"[{s.kind}] {s.message}\n  repro: {s.path}" for s in run.found)
    assert run.examples > 0
