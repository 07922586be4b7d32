"""Paged KV building blocks: the NaN-poisoned block pool, the allocator (free list, reference
counts, LRU eviction of cached blocks), and gather / scatter across non-contiguous blocks."""

from __future__ import annotations

import pytest
import torch

from fuzzcache.engine.paged import BlockAllocator, BlockPool, PoolExhausted, blocks_needed, gather, scatter, slot_of
from fuzzcache.model import ModelConfig

MODEL = ModelConfig(vocab_size=8, n_layer=2, n_head=4, n_kv_head=2, head_dim=3, max_seq_len=64)


def make_pool(num_blocks: int, block_size: int) -> BlockPool:
    return BlockPool(MODEL, num_blocks, block_size, torch.float32, torch.device("cpu"))


def entries(t: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Distinct random KV entries, per layer (1, H_kv, t, D)."""
    g = torch.Generator().manual_seed(seed)
    shape = (1, MODEL.n_kv_head, t, MODEL.head_dim)
    return [(torch.randn(shape, generator=g), torch.randn(shape, generator=g)) for _ in range(MODEL.n_layer)]


def fill_block(pool: BlockPool, block: int, value: float = 1.0) -> None:
    for k, v in zip(pool.k, pool.v):
        k[block] = value
        v[block] = value


def block_is_nan(pool: BlockPool, block: int) -> bool:
    return all(bool(k[block].isnan().all()) and bool(v[block].isnan().all()) for k, v in zip(pool.k, pool.v))


def block_is_finite(pool: BlockPool, block: int) -> bool:
    return all(bool(k[block].isfinite().all()) and bool(v[block].isfinite().all()) for k, v in zip(pool.k, pool.v))


# ---- helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tokens, block_size, want", [(0, 4, 0), (1, 4, 1), (3, 4, 1), (4, 4, 1), (5, 4, 2), (8, 4, 2), (9, 4, 3), (7, 1, 7), (7, 3, 3)]
)
def test_blocks_needed_is_ceil_division(tokens, block_size, want):
    assert blocks_needed(tokens, block_size) == want


@pytest.mark.parametrize(
    "position, block_size, want", [(0, 4, (0, 0)), (3, 4, (0, 3)), (4, 4, (1, 0)), (9, 4, (2, 1)), (5, 1, (5, 0)), (7, 3, (2, 1))]
)
def test_slot_of(position, block_size, want):
    assert slot_of(position, block_size) == want


# ---- pool --------------------------------------------------------------------------------


def test_fresh_pool_is_all_nan_with_the_documented_shape():
    pool = make_pool(5, 3)
    assert pool.num_blocks == 5 and pool.block_size == 3
    assert len(pool.k) == len(pool.v) == MODEL.n_layer
    for t in pool.k + pool.v:
        assert t.shape == (5, MODEL.n_kv_head, 3, MODEL.head_dim)
        assert t.dtype == torch.float32
        assert bool(t.isnan().all())


def test_poison_from_slot_only_touches_the_tail_of_that_block():
    pool = make_pool(3, 4)
    fill_block(pool, 0)
    fill_block(pool, 1)
    pool.poison(1, from_slot=2)
    assert block_is_finite(pool, 0)
    for k, v in zip(pool.k, pool.v):
        for t in (k, v):
            assert bool(t[1, :, :2].isfinite().all())
            assert bool(t[1, :, 2:].isnan().all())


# ---- allocator ---------------------------------------------------------------------------


def test_allocate_takes_from_the_free_list_with_ref_count_one():
    alloc = BlockAllocator(make_pool(4, 2))
    assert alloc.free == [0, 1, 2, 3] and alloc.ref_count == [0, 0, 0, 0]
    first = alloc.allocate()
    assert first == 0
    assert alloc.free == [1, 2, 3]
    assert alloc.ref_count[first] == 1
    got = [alloc.allocate() for _ in range(3)]
    assert sorted(got + [first]) == [0, 1, 2, 3]  # each block handed out once
    assert alloc.free == [] and alloc.num_available() == 0
    assert all(c == 1 for c in alloc.ref_count)
    assert alloc.evictions == 0


def test_deallocate_returns_an_uncached_block_to_the_free_list_and_poisons_it():
    pool = make_pool(3, 2)
    alloc = BlockAllocator(pool)
    block = alloc.allocate()
    fill_block(pool, block)
    alloc.deallocate(block)
    assert alloc.ref_count[block] == 0
    assert block in alloc.free and block not in alloc.evictable
    assert block_is_nan(pool, block)
    assert alloc.num_available() == 3


def test_shared_block_is_freed_only_at_the_last_reference():
    pool = make_pool(2, 2)
    alloc = BlockAllocator(pool)
    block = alloc.allocate()
    alloc.share(block)
    assert alloc.ref_count[block] == 2
    fill_block(pool, block)
    alloc.deallocate(block)
    assert alloc.ref_count[block] == 1
    assert block not in alloc.free
    assert block_is_finite(pool, block)  # the other holder still reads it
    alloc.deallocate(block)
    assert block in alloc.free and block_is_nan(pool, block)


def test_double_free_raises():
    alloc = BlockAllocator(make_pool(2, 2))
    block = alloc.allocate()
    alloc.deallocate(block)
    with pytest.raises(RuntimeError, match="double free"):
        alloc.deallocate(block)
    with pytest.raises(RuntimeError, match="double free"):
        alloc.deallocate(1)  # never allocated
    assert alloc.free.count(block) == 1  # the failed free did not duplicate it


def test_pool_exhausted_when_nothing_is_free_or_evictable():
    alloc = BlockAllocator(make_pool(2, 2))
    alloc.allocate()
    alloc.allocate()
    assert not alloc.can_allocate(1) and alloc.can_allocate(0)
    with pytest.raises(PoolExhausted, match="no free or evictable block") as info:
        alloc.allocate()
    assert isinstance(info.value, RuntimeError)
    assert "2" in str(info.value)  # names the pool size


def test_cached_block_parks_as_evictable_and_keeps_its_kv():
    pool = make_pool(3, 2)
    alloc = BlockAllocator(pool)
    cached = {1}
    alloc.is_cached = lambda b: b in cached
    a, b = alloc.allocate(), alloc.allocate()
    assert (a, b) == (0, 1)
    fill_block(pool, b)
    alloc.deallocate(b)
    assert alloc.ref_count[b] == 0
    assert list(alloc.evictable) == [b] and b not in alloc.free
    assert block_is_finite(pool, b)  # not poisoned: the prefix cache may hand it out again
    assert alloc.num_available() == 2 and alloc.can_allocate(2) and not alloc.can_allocate(3)


def test_share_revives_an_evictable_block():
    pool = make_pool(2, 2)
    alloc = BlockAllocator(pool)
    alloc.is_cached = lambda b: True
    evicted = []
    alloc.on_evict = evicted.append
    a, _ = alloc.allocate(), alloc.allocate()
    fill_block(pool, a)
    alloc.deallocate(a)
    assert a in alloc.evictable
    alloc.share(a)
    assert a not in alloc.evictable and alloc.ref_count[a] == 1
    assert block_is_finite(pool, a)
    # Revived, it can no longer be evicted: the pool is full.
    with pytest.raises(PoolExhausted):
        alloc.allocate()
    assert evicted == [] and alloc.evictions == 0


def test_allocate_prefers_a_free_block_over_evicting():
    pool = make_pool(3, 2)
    alloc = BlockAllocator(pool)
    alloc.is_cached = lambda b: b == 0
    evicted = []
    alloc.on_evict = evicted.append
    blocks = [alloc.allocate() for _ in range(3)]
    fill_block(pool, 0)
    alloc.deallocate(blocks[0])  # evictable
    alloc.deallocate(blocks[1])  # free
    assert alloc.allocate() == 1
    assert evicted == [] and alloc.evictions == 0
    assert list(alloc.evictable) == [0] and block_is_finite(pool, 0)


def test_eviction_takes_the_least_recently_released_cached_block():
    pool = make_pool(4, 2)
    alloc = BlockAllocator(pool)
    cached = {0, 1, 2}
    alloc.is_cached = lambda b: b in cached
    evicted: list[int] = []

    def on_evict(block: int) -> None:
        evicted.append(block)
        cached.discard(block)  # as the prefix cache does

    alloc.on_evict = on_evict
    blocks = [alloc.allocate() for _ in range(4)]
    assert blocks == [0, 1, 2, 3]
    for b in blocks[:3]:
        fill_block(pool, b, float(b + 1))
    for b in (2, 0, 1):  # release order: 2 first, so it is the least recently used
        alloc.deallocate(b)
    assert list(alloc.evictable) == [2, 0, 1] and alloc.free == []

    got = alloc.allocate()
    assert got == 2
    assert evicted == [2] and alloc.evictions == 1
    assert alloc.ref_count[2] == 1
    assert block_is_nan(pool, 2)  # the previous owner's KV does not leak to the new one
    assert block_is_finite(pool, 0) and block_is_finite(pool, 1)  # the others are untouched
    assert list(alloc.evictable) == [0, 1]

    # A revived and re-released block goes to the back of the queue.
    alloc.share(0)
    alloc.deallocate(0)
    assert list(alloc.evictable) == [1, 0]
    assert alloc.allocate() == 1
    assert alloc.allocate() == 0
    assert evicted == [2, 1, 0] and alloc.evictions == 3
    with pytest.raises(PoolExhausted):
        alloc.allocate()


def test_evicted_block_freed_later_goes_to_the_free_list():
    pool = make_pool(1, 2)
    alloc = BlockAllocator(pool)
    cached = {0}
    alloc.is_cached = lambda b: b in cached
    alloc.on_evict = cached.discard
    b = alloc.allocate()
    alloc.deallocate(b)
    assert alloc.allocate() == b and alloc.evictions == 1
    fill_block(pool, b)
    alloc.deallocate(b)  # no longer cached
    assert alloc.free == [b] and not alloc.evictable and block_is_nan(pool, b)


# ---- gather / scatter ----------------------------------------------------------------------


def scattered_table(n_blocks: int) -> list[int]:
    """Physical blocks out of order and with gaps: the odd blocks of a pool of 2n+2, reversed."""
    return [2 * i + 1 for i in reversed(range(n_blocks))]


def concat(parts: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (torch.cat([p[layer][0] for p in parts], dim=2), torch.cat([p[layer][1] for p in parts], dim=2))
        for layer in range(MODEL.n_layer)
    ]


CASES = [(b, k * b + d) for b in (1, 3, 4) for k in (1, 2, 3) for d in (-1, 0, 1) if k * b + d >= 1]


@pytest.mark.parametrize("block_size, n", CASES)
def test_scatter_then_gather_round_trip_across_non_contiguous_blocks(block_size, n):
    table = scattered_table(blocks_needed(n + 1, block_size))  # room for one position past the end
    pool = make_pool(2 * len(table) + 2, block_size)
    # Scatter in uneven pieces so that writes start mid-block and cross block boundaries.
    parts, start, piece = [], 0, 1
    while start < n:
        t = min(piece, n - start)
        new = entries(t, seed=100 * n + start)
        scatter(pool, table, start, new)
        parts.append(new)
        start += t
        piece = piece % 3 + 1
    want = concat(parts)

    got = gather(pool, table, n)
    assert len(got) == MODEL.n_layer
    for (gk, gv), (wk, wv) in zip(got, want):
        assert gk.shape == gv.shape == (1, MODEL.n_kv_head, n, MODEL.head_dim)
        assert torch.equal(gk, wk) and torch.equal(gv, wv)

    # A shorter gather is the prefix, in logical order.
    m = max(1, n - block_size - 1)
    for (gk, gv), (wk, wv) in zip(gather(pool, table, m), want):
        assert torch.equal(gk, wk[:, :, :m]) and torch.equal(gv, wv[:, :, :m])

    # One position past what was written reads NaN: the poisoning works.
    for (gk, gv), (wk, wv) in zip(gather(pool, table, n + 1), want):
        assert gk.shape == (1, MODEL.n_kv_head, n + 1, MODEL.head_dim)
        assert torch.equal(gk[:, :, :n], wk) and torch.equal(gv[:, :, :n], wv)
        assert bool(gk[:, :, n].isnan().all()) and bool(gv[:, :, n].isnan().all())

    # Nothing was written outside the table's slots for positions < n.
    for block in range(pool.num_blocks):
        if block not in table:
            assert block_is_nan(pool, block), f"scatter wrote into block {block}, not in the table"


def test_gather_sees_the_block_table_not_the_physical_order():
    """Swapping two entries of the block table swaps the gathered blocks."""
    block_size, n = 2, 4
    pool = make_pool(4, block_size)
    table = [3, 0]
    new = entries(n, seed=1)
    scatter(pool, table, 0, new)
    # Logical block 0 lives in physical block 3.
    for layer, (nk, nv) in enumerate(new):
        assert torch.equal(pool.k[layer][3], nk[0, :, :2])
        assert torch.equal(pool.v[layer][0], nv[0, :, 2:])
    swapped = gather(pool, [0, 3], n)
    for (gk, _), (nk, _) in zip(swapped, new):
        assert torch.equal(gk[:, :, :2], nk[:, :, 2:]) and torch.equal(gk[:, :, 2:], nk[:, :, :2])


def test_scatter_overwrites_in_place_without_touching_neighbours():
    block_size = 3
    pool = make_pool(3, block_size)
    table = [2, 1]
    first = entries(5, seed=2)
    scatter(pool, table, 0, first)
    patch = entries(2, seed=3)
    scatter(pool, table, 2, patch)  # positions 2 and 3: across the block boundary
    got = gather(pool, table, 5)
    for (gk, gv), (fk, fv), (pk, pv) in zip(got, first, patch):
        assert torch.equal(gk[:, :, :2], fk[:, :, :2]) and torch.equal(gk[:, :, 2:4], pk) and torch.equal(gk[:, :, 4:], fk[:, :, 4:])
        assert torch.equal(gv[:, :, :2], fv[:, :, :2]) and torch.equal(gv[:, :, 2:4], pv) and torch.equal(gv[:, :, 4:], fv[:, :, 4:])
