"""The reference target's ``generate`` equals the greedy full recompute over a fixed grid of
configs: every feature on and off, and pools small enough to force eviction and preemption.
The grid must also be shown to reach every path (non-zero statistics), or it proves nothing."""

from __future__ import annotations

import pytest
import torch

from fuzzcache import EngineConfig, Request, resolve_target
from fuzzcache.contract import min_blocks_for
from fuzzcache.oracle import greedy_continuation

SHARED = (11, 12, 13, 14, 15, 16, 17, 18, 19)  # two full blocks of 4 plus one token


def grid_requests() -> list[Request]:
    g = torch.Generator().manual_seed(7)
    rand = lambda n: tuple(torch.randint(0, 64, (n,), generator=g).tolist())  # noqa: E731
    return [
        Request(0, rand(5), 12, 0),
        Request(1, rand(9), 6, 0),
        Request(2, SHARED + (3, 4), 9, 0),  # shares a prefix with 3 and 4, same step as 3
        Request(3, SHARED + (7,), 5, 0),
        Request(4, SHARED + (7, 8, 9), 4, 6),  # arrives after 2 and 3 committed their blocks
        Request(5, rand(1), 10, 2),
        Request(6, rand(4), 0, 1),  # max_new_tokens = 0
        Request(7, rand(13), 16, 3),
    ]


def small_pool(block_size: int, spec_k: int = 0) -> int:
    cfg = EngineConfig(block_size=block_size, spec_k=spec_k)
    return max(min_blocks_for(r, cfg) for r in grid_requests())


GRID = {
    "defaults": EngineConfig(),
    "unbatched": EngineConfig(max_num_seqs=1),
    "block1": EngineConfig(block_size=1),
    "block3-chunk5": EngineConfig(block_size=3, chunk_size=5),
    "chunk1-budget4": EngineConfig(block_size=4, chunk_size=1, max_batch_tokens=4),
    "prefix": EngineConfig(block_size=4, prefix_cache=True),
    "prefix-smallpool": EngineConfig(block_size=4, num_blocks=small_pool(4), prefix_cache=True, max_num_seqs=4),
    "smallpool-chunk3": EngineConfig(block_size=2, num_blocks=small_pool(2), chunk_size=3),
    "spec-trigram": EngineConfig(block_size=4, spec_k=3, draft="trigram"),
    "spec-bigram-k1": EngineConfig(block_size=5, spec_k=1, draft="bigram"),
    "spec-lookup-k5": EngineConfig(block_size=4, spec_k=5, draft="prompt_lookup"),
    "fused": EngineConfig(block_size=4, chunk_size=3, interleave=True),
    "separate": EngineConfig(block_size=4, chunk_size=3, interleave=False),
    "all-on": EngineConfig(block_size=4, num_blocks=small_pool(4, 3) + 1, chunk_size=3, max_num_seqs=3,
                           max_batch_tokens=8, prefix_cache=True, spec_k=3, draft="prompt_lookup", interleave=True),
    "all-on-minpool": EngineConfig(block_size=3, num_blocks=small_pool(3, 2), chunk_size=2, max_num_seqs=4,
                                   prefix_cache=True, spec_k=2, draft="trigram", interleave=True),
}


@pytest.fixture(scope="module")
def target():
    return resolve_target("reference")


@pytest.fixture(scope="module")
def oracle(target):
    return {r.rid: greedy_continuation(target.reference_logits, r.prompt, r.max_new_tokens) for r in grid_requests()}


def run_config(name: str, target) -> tuple[list, dict]:
    """The grid's requests under config ``name``: the completions, and the run's path statistics."""
    requests = grid_requests()
    completions = target.generate(requests, GRID[name])
    totals = dict(target.last_stats)
    for key in ("cached_prefix_tokens", "draft_proposed", "draft_accepted"):
        totals[key] = sum(c.stats[key] for c in completions)
    return completions, totals


@pytest.mark.parametrize("name", list(GRID))
def test_generate_equals_full_recompute(name, target, oracle):
    requests = grid_requests()
    completions, _ = run_config(name, target)
    assert [c.rid for c in completions] == [r.rid for r in requests]
    for req, comp in zip(requests, completions):
        want_tokens, want_logits = oracle[req.rid]
        assert comp.tokens == want_tokens, f"{name}: request {req.rid}"
        assert comp.logits.shape == (req.max_new_tokens, target.vocab_size)
        torch.testing.assert_close(comp.logits, want_logits, atol=1e-4, rtol=0)


def test_grid_reaches_every_path(target):
    """The whole grid run again (it takes under a second), so this test stands alone in any order or worker."""
    grid_stats = {name: run_config(name, target)[1] for name in GRID}
    total = lambda key: sum(s[key] for s in grid_stats.values())  # noqa: E731
    print({k: total(k) for k in ("prefix_hit_blocks", "evictions", "preemptions", "fused_steps", "draft_proposed", "draft_accepted")})
    assert total("cached_prefix_tokens") > 0 and total("prefix_hit_blocks") > 0
    assert total("evictions") > 0
    assert total("preemptions") > 0
    assert total("fused_steps") > 0
    assert total("draft_accepted") > 0, "no draft was ever accepted"
    assert total("draft_proposed") > total("draft_accepted"), "no draft was ever rejected"
    assert grid_stats["separate"]["fused_steps"] == 0
