"""Rare paths (fuzzcache.rare_paths): each score is 1 on a trace that reached its path and
less on one that came close, from the contract's tokens and stats alone; steering records the
reached ones in the paths report, and a bounded search on the reference reaches each."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from fuzzcache.contract import Completion, EngineConfig, Request
from fuzzcache.coverage import take
from fuzzcache.properties import get
from fuzzcache.rare_paths import RARE_PATHS, SCORES, steer
from fuzzcache.scenario import TraceScenario
from fuzzcache.targets.reference import ReferenceTarget


def completion(rid: int, tokens: list[int], forks: list[Completion] = (), **stats) -> Completion:
    return Completion(rid, tokens, torch.zeros(len(tokens), 4), dict(stats), list(forks))


def score(name: str, requests, config: EngineConfig, completions) -> float:
    return SCORES[name](TraceScenario(tuple(requests), config), completions)


def test_every_draft_accepted():
    r = [Request(0, (1,), 4)]
    assert score("every draft accepted", r, EngineConfig(spec_k=2), [completion(0, [1] * 4, draft_proposed=4, draft_accepted=4)]) == 1.0
    assert score("every draft accepted", r, EngineConfig(spec_k=2), [completion(0, [1] * 4, draft_proposed=4, draft_accepted=1)]) == 0.25
    assert score("every draft accepted", r, EngineConfig(), [completion(0, [1] * 4)]) == 0.0


def test_stop_on_a_block_boundary():
    r = [Request(0, (1, 2, 3), 4, stop=(9,))]
    # prompt 3 + stop as the 2nd token: its position 4 starts block 1 of size 4
    assert score("stop on a block boundary", r, EngineConfig(block_size=4), [completion(0, [5, 9])]) == 1.0
    assert score("stop on a block boundary", r, EngineConfig(block_size=4), [completion(0, [9])]) == 0.75
    assert score("stop on a block boundary", r, EngineConfig(block_size=4), [completion(0, [5, 5, 5, 5])]) == 0.0


def test_partial_block_matches_a_cached_block():
    config = EngineConfig(block_size=4, prefix_cache=True)
    first, second = Request(0, (1, 2, 3, 4, 5), 3), Request(1, (1, 2, 3, 4, 5, 6), 1, arrival=1)
    done = [completion(0, [6, 7, 8]), completion(1, [7])]
    assert score("partial block matches a cached block", [first, second], config, done) == 1.0  # 5+3 tokens cover block 1
    short = [completion(0, [6]), completion(1, [7])]  # 6 tokens: block 1 never full
    assert score("partial block matches a cached block", [first, second], config, short) < 1.0
    assert score("partial block matches a cached block", [first, second], EngineConfig(block_size=4), done) == 0.0


def test_abort_during_prefill():
    r = [Request(0, (1, 2, 3), 2, abort_at=1)]
    assert score("abort during prefill", r, EngineConfig(chunk_size=1), [completion(0, [], abort_phase=2)]) == 1.0
    assert score("abort during prefill", r, EngineConfig(), [completion(0, [], abort_phase=1)]) == 0.5
    assert score("abort during prefill", r, EngineConfig(), [completion(0, [4, 4])]) == 0.25


def test_preempted_while_sharing_blocks():
    r = [Request(0, (1, 2), 2)]
    assert score("preempted while sharing blocks", r, EngineConfig(), [completion(0, [1, 1], preemptions=1, cached_prefix_tokens=1)]) == 1.0
    assert score("preempted while sharing blocks", r, EngineConfig(), [completion(0, [1, 1], preemptions=1)]) == 0.5


def test_fork_behind_its_siblings():
    r = [Request(0, (1,), 2, n=2)]
    assert score("fork behind its siblings", r, EngineConfig(), [completion(0, [1, 1], [completion(0, [1, 1], fork_waited=1)])]) == 1.0
    assert score("fork behind its siblings", r, EngineConfig(), [completion(0, [1, 1], [completion(0, [1, 1])])]) == 0.5


@pytest.mark.slow
def test_steering_reaches_every_rare_path_on_the_reference():
    """A bounded search of every engine-level property together reaches each rare path."""
    target = ReferenceTarget()
    take()
    for pid in ("engine.trace", "engine.same.pool", "engine.same.chunked", "engine.same.speculative"):
        prop = get(pid)

        @settings(max_examples=150, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
        @given(prop.strategy(target))
        def search(scenario):
            prop.check(target, scenario)

        search()
    paths = take()
    missing = [name for name in RARE_PATHS if not paths[f"rare: {name}"]]
    assert not missing, (missing, paths)


def test_steer_outside_hypothesis_only_counts():
    take()
    scenario = TraceScenario((Request(0, (1,), 2, n=2),), EngineConfig())
    scores = steer(scenario, [completion(0, [1, 1], [completion(0, [1, 1], fork_waited=1)])])
    assert scores["fork behind its siblings"] == 1.0 and take()["rare: fork behind its siblings"] == 1
