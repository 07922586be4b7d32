"""Swarm testing (strategies.swarm): each example switches a subset of the features on, so some
traces are plain and others combine rare features at full strength; every feature shrinks to
off; a target's undeclared features are never drawn."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, find, given, settings

from fuzzcache.contract import LIFECYCLE
from fuzzcache.scenario import TraceScenario
from fuzzcache.targets.reference import ReferenceTarget
from fuzzcache.strategies.engine import trace_scenarios
from fuzzcache.strategies.swarm import SWARM_FEATURES, available

TARGET = ReferenceTarget()


def target_trace_scenarios(target, focus=None):
    """The target's traces, with a stand-in for the oracle's greedy continuation (stop tokens are
    drawn from it): these tests are about the draws, not the model."""
    return trace_scenarios(frozenset(target.features), target.vocab_size, target.max_seq_len, focus, greedy=lambda prompt, n: [5] * n)


FIND = settings(max_examples=300, database=None, derandomize=True, suppress_health_check=list(HealthCheck))


def drawn(strategy, n: int) -> list[TraceScenario]:
    """The first ``n`` scenarios ``strategy`` draws (derandomized)."""
    seen = []

    @settings(max_examples=n, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def draw(scenario):
        seen.append(scenario)

    draw()
    return seen


def lifecycle_of(s: TraceScenario) -> set[str]:
    on = set()
    for r in s.requests:
        on |= {"stop"} if r.stop else set()
        on |= {"abort"} if r.abort_at is not None else set()
        on |= {"fork"} if r.n > 1 else set()
    return on


def config_features(s: TraceScenario) -> set[str]:
    c = s.config
    named = {"prefix cache": c.prefix_cache, "chunking": c.chunk_size is not None, "budget": c.max_batch_tokens is not None,
             "bounded pool": c.num_blocks is not None, "drafts": c.spec_k > 0, "fused step": c.interleave}
    return {name for name, on in named.items() if on}


def test_examples_are_plain_or_combine_rare_features():
    seen = drawn(target_trace_scenarios(TARGET), 200)
    plain_pairs = [s for s in seen if len(s.requests) > 1 and s.config.prefix_cache and not lifecycle_of(s)]
    combined = [s for s in seen if len(lifecycle_of(s) | config_features(s)) >= 3]
    assert len(plain_pairs) >= 10, "two plain requests with the prefix cache on: the search must still try them"
    assert len(combined) >= 40, "three or more rare features at once"
    for feature in ("stop", "abort", "fork"):
        assert sum(feature in lifecycle_of(s) for s in seen) >= 20, feature
    for feature in ("prefix cache", "chunking", "budget", "bounded pool", "drafts", "fused step"):
        assert sum(feature in config_features(s) for s in seen) >= 40, feature


@pytest.mark.slow
def test_every_feature_shrinks_to_off():
    """The minimal trace with a feature on has every other feature off."""
    with_cache = find(target_trace_scenarios(TARGET), lambda s: s.config.prefix_cache, settings=FIND)
    assert config_features(with_cache) == {"prefix cache"} and not lifecycle_of(with_cache)
    forked_stop = find(target_trace_scenarios(TARGET), lambda s: {"fork", "stop"} <= lifecycle_of(s), settings=FIND)
    assert lifecycle_of(forked_stop) == {"fork", "stop"} and not config_features(forked_stop)


def test_a_focus_keeps_its_path_on_and_two_requests():
    seen = drawn(target_trace_scenarios(TARGET, focus="pool"), 40)
    assert seen and all(s.config.num_blocks is not None and len(s.requests) >= 2 for s in seen)


def test_only_the_features_a_target_declares_are_swarmed():
    bare = frozenset({"batching", "paged"})
    assert set(available(bare)) == {name for name, needs in SWARM_FEATURES.items() if needs is None}
    target = ReferenceTarget(name="bare")
    target.features = frozenset(target.features) - LIFECYCLE - {"prefix_cache"}
    seen = drawn(target_trace_scenarios(target), 80)
    assert seen and not any(lifecycle_of(s) or s.config.prefix_cache for s in seen)
