"""Prefix cache: chained block hashes, longest-chain match with a token check on every hit,
commit of full blocks only, first writer wins, and forgetting blocks the allocator evicts."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

import fuzzcache.engine.prefix_cache as prefix_cache_module
from fuzzcache.engine.paged import BlockAllocator, BlockPool, PoolExhausted
from fuzzcache.engine.prefix_cache import ROOT_HASH, PrefixCache, block_hash
from fuzzcache.model import ModelConfig
from fuzzcache.properties.prefix_hit import prefix_scenarios
from fuzzcache.strategies.engine import Traits

MODEL = ModelConfig(vocab_size=8, n_layer=1, n_head=2, n_kv_head=1, head_dim=2, max_seq_len=64)
B = 2  # block size used throughout
TOKENS = (1, 2, 3, 4, 5, 6, 7, 8)  # four full blocks of 2


def make_cache(num_blocks: int = 16) -> tuple[PrefixCache, BlockAllocator]:
    pool = BlockPool(MODEL, num_blocks, B, torch.float32, torch.device("cpu"))
    alloc = BlockAllocator(pool)
    return PrefixCache(alloc, B), alloc


def allocate(alloc: BlockAllocator, n: int) -> list[int]:
    return [alloc.allocate() for _ in range(n)]


def committed(tokens=TOKENS, num_blocks: int = 16):
    """A cache holding one sequence's four committed blocks (still referenced by it)."""
    cache, alloc = make_cache(num_blocks)
    allocate(alloc, 3)  # so the sequence's blocks are not simply 0..3
    table = allocate(alloc, len(tokens) // B)
    cache.commit(tokens, table, 0, len(table))
    return cache, alloc, table


# ---- block_hash ---------------------------------------------------------------------------------


def test_block_hash_is_deterministic_and_takes_any_sequence():
    assert block_hash(ROOT_HASH, (1, 2)) == block_hash(ROOT_HASH, [1, 2]) == block_hash("", (1, 2))
    assert isinstance(block_hash(ROOT_HASH, (1, 2)), str)


def test_block_hash_is_chained_on_the_parent():
    a = block_hash(ROOT_HASH, (1, 2))
    b = block_hash(ROOT_HASH, (9, 9))
    assert a != b
    # The same tokens under different parents hash differently.
    assert block_hash(a, (3, 4)) != block_hash(b, (3, 4))
    assert block_hash(a, (3, 4)) != block_hash(ROOT_HASH, (3, 4))


def test_block_hash_separates_token_boundaries():
    assert block_hash(ROOT_HASH, (1, 23)) != block_hash(ROOT_HASH, (12, 3))
    assert block_hash(ROOT_HASH, (1, 2)) != block_hash(ROOT_HASH, (1, 2, 0))


# ---- match ---------------------------------------------------------------------------------------


def test_match_on_an_empty_cache_finds_nothing():
    cache, alloc = make_cache()
    assert cache.match(TOKENS, 4) == []
    assert cache.hits == 0
    assert alloc.ref_count == [0] * 16


def test_match_returns_the_whole_committed_chain_and_takes_references():
    cache, alloc, table = committed()
    before = list(alloc.ref_count)
    found = cache.match(TOKENS, 4)
    assert found == table
    for block in range(16):
        assert alloc.ref_count[block] == before[block] + (1 if block in table else 0)
    assert cache.hits == 4


def test_match_respects_max_blocks():
    cache, alloc, table = committed()
    assert cache.match(TOKENS, 2) == table[:2]
    assert cache.match(TOKENS, 0) == []
    assert alloc.ref_count[table[0]] == alloc.ref_count[table[1]] == 2
    assert alloc.ref_count[table[2]] == alloc.ref_count[table[3]] == 1


def test_match_of_a_longer_sequence_stops_after_the_committed_blocks():
    cache, _, table = committed()
    longer = TOKENS + (1, 2, 3, 4)
    assert cache.match(longer, 6) == table


def test_match_ignores_a_partial_trailing_block():
    cache, _, table = committed()
    # Only 3 full blocks plus one token: asking for 4 blocks finds 3, the partial one is no block.
    assert cache.match(TOKENS[:7], 4) == table[:3]


def test_match_stops_at_the_first_miss():
    cache, alloc, table = committed()
    diverged = TOKENS[:2] + (0, 0) + TOKENS[4:]  # block 1 differs, blocks 2 and 3 equal TOKENS'
    found = cache.match(diverged, 4)
    assert found == table[:1]
    assert alloc.ref_count[table[2]] == alloc.ref_count[table[3]] == 1  # no reference taken past the miss
    assert cache.match((0,) + TOKENS[1:], 4) == []  # a miss in block 0 finds nothing


def test_same_block_under_a_different_prefix_is_not_matched():
    cache, _, _ = committed()
    # (3, 4) was committed as the second block, after (1, 2): it is no first block.
    assert cache.match((3, 4, 5, 6), 2) == []


# ---- commit -----------------------------------------------------------------------------------


def test_commit_indexes_only_blocks_first_to_last():
    cache, alloc = make_cache()
    table = allocate(alloc, 4)
    cache.commit(TOKENS, table, 1, 3)
    assert set(cache.hash_of_block) == {table[1], table[2]}
    assert len(cache.by_hash) == 2
    # The hashes are the chained ones, computed from block 0 even though it is not indexed.
    h0 = block_hash(ROOT_HASH, TOKENS[0:2])
    h1 = block_hash(h0, TOKENS[2:4])
    h2 = block_hash(h1, TOKENS[4:6])
    assert cache.hash_of_block[table[1]] == h1 and cache.hash_of_block[table[2]] == h2
    assert cache.by_hash[h1].block == table[1] and cache.by_hash[h1].parent == h0 and cache.by_hash[h1].tokens == (3, 4)
    # Block 0 is not indexed, so the chain cannot start: nothing matches.
    assert cache.match(TOKENS, 4) == []
    # Committing the rest later completes the chain.
    cache.commit(TOKENS, table, 3, 4)
    cache.commit(TOKENS, table, 0, 1)
    assert cache.match(TOKENS, 4) == table


def test_commit_with_an_empty_range_indexes_nothing():
    cache, alloc = make_cache()
    table = allocate(alloc, 4)
    cache.commit(TOKENS, table, 2, 2)
    cache.commit(TOKENS, table, 0, 0)
    assert cache.by_hash == {} and cache.hash_of_block == {}


def test_committed_blocks_park_as_evictable_instead_of_free():
    cache, alloc = make_cache(4)
    table = allocate(alloc, 4)
    cache.commit(TOKENS, table, 0, 2)
    for block in table:
        alloc.deallocate(block)
    assert list(alloc.evictable) == table[:2]
    assert sorted(alloc.free) == sorted(table[2:])


def test_second_sequence_with_the_same_content_does_not_replace_the_first():
    cache, alloc, first = committed()
    second = allocate(alloc, 4)
    index_before = dict(cache.by_hash), dict(cache.hash_of_block)
    cache.commit(TOKENS, second, 0, 4)
    assert (dict(cache.by_hash), dict(cache.hash_of_block)) == index_before
    assert not set(second) & set(cache.hash_of_block)
    assert cache.match(TOKENS, 4) == first
    # The duplicate's blocks are not cached, so they are freed rather than parked.
    for block in second:
        alloc.deallocate(block)
    assert set(second) <= set(alloc.free) and not set(second) & set(alloc.evictable)


def test_a_block_is_indexed_under_one_hash_only():
    cache, alloc = make_cache()
    table = allocate(alloc, 2)
    cache.commit((1, 2, 3, 4), table, 0, 2)
    # The same physical block offered again under other content keeps its first hash.
    cache.commit((7, 7, 3, 4), table, 0, 2)
    assert len(cache.hash_of_block) == 2 and len(cache.by_hash) == 2
    assert cache.match((7, 7), 1) == []


# ---- the token check ---------------------------------------------------------------------------


def test_match_refuses_a_hash_collision_with_different_tokens(monkeypatch):
    monkeypatch.setattr(prefix_cache_module, "block_hash", lambda parent, tokens: "x")
    cache, alloc = make_cache()
    table = allocate(alloc, 1)
    cache.commit((1, 2), table, 0, 1)
    assert set(cache.by_hash) == {"x"}
    before = list(alloc.ref_count)
    assert cache.match((3, 4), 1) == []  # same (weak) hash, different tokens
    assert alloc.ref_count == before and cache.hits == 0
    assert cache.match((1, 2), 1) == table  # the genuine owner still hits


def test_match_refuses_a_collision_whose_parent_differs(monkeypatch):
    # A hash that ignores the parent: block (3, 4) is indexed under the parent of (1, 2).
    monkeypatch.setattr(prefix_cache_module, "block_hash", lambda parent, tokens: ",".join(map(str, tokens)))
    cache, alloc = make_cache()
    table = allocate(alloc, 2)
    cache.commit((1, 2, 3, 4), table, 0, 2)
    cache.commit((5, 6), allocate(alloc, 1), 0, 1)
    # (5, 6) then (3, 4): the second block has the same hash and tokens but another parent.
    assert cache.match((5, 6, 3, 4), 2) == [cache.by_hash["5,6"].block]
    assert cache.match((1, 2, 3, 4), 2) == table


# ---- eviction --------------------------------------------------------------------------------


def test_evicted_blocks_disappear_from_the_cache():
    cache, alloc = make_cache(num_blocks=4)
    table = allocate(alloc, 4)
    cache.commit(TOKENS, table, 0, 4)
    # Release in reverse: the last block becomes the least recently used.
    for block in reversed(table):
        alloc.deallocate(block)
    assert list(alloc.evictable) == list(reversed(table)) and alloc.free == []
    assert cache.match(TOKENS, 4) == table  # still cached while only evictable
    for block in reversed(table):
        alloc.deallocate(block)
    assert list(alloc.evictable) == list(reversed(table))

    got = alloc.allocate()  # nothing free: evicts table[3]
    assert got == table[3] and alloc.evictions == 1
    assert table[3] not in cache.hash_of_block
    assert len(cache.by_hash) == 3 and table[3] not in {e.block for e in cache.by_hash.values()}
    assert cache.match(TOKENS, 4) == table[:3]
    for block in reversed(table[:3]):
        alloc.deallocate(block)

    # The freshly allocated block, no longer cached, goes to the free list when released.
    alloc.deallocate(got)
    assert got in alloc.free

    [alloc.allocate() for _ in range(3)]  # one free, then evicts table[2] and table[1]
    assert alloc.evictions == 3
    assert set(cache.hash_of_block) == {table[0]}
    assert cache.match(TOKENS, 4) == table[:1]


def test_exhausted_pool_leaves_the_cache_intact():
    cache, alloc, table = committed(num_blocks=7)
    with pytest.raises(PoolExhausted):
        alloc.allocate()  # every block is referenced: nothing to evict
    assert set(cache.hash_of_block) == set(table) and len(cache.by_hash) == 4


@given(prefix_scenarios(Traits(min_block_size=16), max_seq_len=64))
@settings(max_examples=200, deadline=None, database=None)
def test_prefix_scenarios_fit_the_targets_max_seq_len(scenario):
    """Found by a llamacpp:llama campaign: a copied prefix made a 61-token prompt + 4 new tokens
    exceed max_seq_len 64, which the target refused (a false 'crash')."""
    assert all(len(p) + scenario.max_new_tokens <= 64 for p in scenario.prompts)
