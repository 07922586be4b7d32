"""Paged KV: a block pool, an allocator with a free list and reference counts, block tables,
gather for attention and scatter of new entries.

Unused slots hold NaN, so a read past a sequence's end poisons its logits instead of
returning a plausible number.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch

from fuzzcache.model import KVCache, ModelConfig


class PoolExhausted(RuntimeError):
    """No free or evictable block is left."""


class BlockPool:
    """Physical KV storage: per layer K and V tensors (num_blocks, H_kv, block_size, D)."""

    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device):
        shape = (num_blocks, config.n_kv_head, block_size, config.head_dim)
        nan = float("nan")
        self.k = [torch.full(shape, nan, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.v = [torch.full(shape, nan, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.block_size = block_size
        self.num_blocks = num_blocks

    def copy_block(self, src: int, dst: int) -> None:
        """Copy every slot of block ``src`` into block ``dst`` (copy-on-write)."""
        for k, v in zip(self.k, self.v):
            k[dst] = k[src]
            v[dst] = v[src]

    def poison(self, block: int, from_slot: int = 0) -> None:
        """Fill slots ``from_slot..`` of ``block`` with NaN."""
        for k, v in zip(self.k, self.v):
            k[block, :, from_slot:] = float("nan")
            v[block, :, from_slot:] = float("nan")


def slot_of(position: int, block_size: int) -> tuple[int, int]:
    """(logical block index, offset inside the block) of a token position."""
    return position // block_size, position % block_size


def blocks_needed(num_tokens: int, block_size: int) -> int:
    """Blocks that hold ``num_tokens`` positions (ceil division)."""
    return -(-num_tokens // block_size)


def gather(pool: BlockPool, block_table: list[int], n: int) -> KVCache:
    """Contiguous cache of the first ``n`` positions of a sequence, per layer (1, H_kv, n, D)."""
    nb = blocks_needed(n, pool.block_size)
    if nb > len(block_table):
        raise IndexError(f"gather of {n} positions needs {nb} blocks, the block table has {len(block_table)}")
    idx = torch.tensor(block_table[:nb], dtype=torch.long, device=pool.k[0].device)
    out: KVCache = []
    for k, v in zip(pool.k, pool.v):
        kb = k[idx].transpose(0, 1).reshape(1, k.shape[1], -1, k.shape[3])  # (1, H_kv, nb*bs, D)
        vb = v[idx].transpose(0, 1).reshape(1, v.shape[1], -1, v.shape[3])
        out.append((kb[:, :, :n], vb[:, :, :n]))
    return out


def scatter(pool: BlockPool, block_table: list[int], start: int, new: KVCache) -> None:
    """Write new entries, per layer (1, H_kv, T, D), at positions start..start+T-1."""
    positions = range(start, start + new[0][0].shape[2])
    phys = torch.tensor([block_table[p // pool.block_size] for p in positions], dtype=torch.long, device=pool.k[0].device)  # (T,)
    offset = torch.tensor([p % pool.block_size for p in positions], dtype=torch.long, device=pool.k[0].device)  # (T,)
    for layer, (nk, nv) in enumerate(new):
        pool.k[layer][phys, :, offset] = nk[0].transpose(0, 1)  # (T, H_kv, D)
        pool.v[layer][phys, :, offset] = nv[0].transpose(0, 1)


class BlockAllocator:
    """Free list plus reference counts. Blocks whose count drops to zero go back to the free
    list, unless ``is_cached`` says the prefix cache still indexes them: those wait in an LRU
    queue and are evicted (``on_evict``) only when the free list is empty."""

    def __init__(self, pool: BlockPool):
        self.pool = pool
        self.free: list[int] = list(range(pool.num_blocks))
        self.ref_count = [0] * pool.num_blocks
        self.evictable: OrderedDict[int, None] = OrderedDict()  # LRU first
        self.is_cached: Callable[[int], bool] = lambda block: False
        self.on_evict: Callable[[int], None] = lambda block: None
        self.evictions = 0

    def num_available(self) -> int:
        return len(self.free) + len(self.evictable)

    def can_allocate(self, n: int) -> bool:
        return self.num_available() >= n

    def allocate(self) -> int:
        """A block with reference count 1; evicts the least recently used cached block if needed."""
        if self.free:
            block = self.free.pop(0)
        elif self.evictable:
            block, _ = self.evictable.popitem(last=False)
            self.on_evict(block)
            self.evictions += 1
            self.pool.poison(block)
        else:
            raise PoolExhausted(f"no free or evictable block in a pool of {self.pool.num_blocks}")
        self.ref_count[block] = 1
        return block

    def share(self, block: int) -> None:
        """Take one more reference to a (cached) block, reviving it if it was evictable."""
        self.evictable.pop(block, None)
        self.ref_count[block] += 1

    def deallocate(self, block: int) -> None:
        """Drop one reference; at zero the block is freed (and poisoned) or parked as evictable."""
        if self.ref_count[block] <= 0:
            raise RuntimeError(f"double free of block {block}")
        self.ref_count[block] -= 1
        if self.ref_count[block] == 0:
            if self.is_cached(block):
                self.evictable[block] = None
            else:
                self.pool.poison(block)
                self.free.append(block)
