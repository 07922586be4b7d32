"""Prefix cache: chained block hashes over full blocks, with a token check on every hit.

A block's hash covers its parent's hash and its own tokens, so equal tokens after
different prefixes never collide. Unreferenced cached blocks stay in the pool until the
allocator evicts them (least recently used first).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

from fuzzcache.engine.paged import BlockAllocator

ROOT_HASH = ""


def block_hash(parent: str, tokens: Sequence[int]) -> str:
    """Hash of a full block: sha1 over the parent block's hash and this block's tokens."""
    return hashlib.sha1(f"{parent}|{','.join(map(str, tokens))}".encode()).hexdigest()


@dataclass
class CachedBlock:
    block: int
    parent: str
    tokens: tuple[int, ...]


class PrefixCache:
    """hash -> physical block, for full blocks whose KV has been written."""

    def __init__(self, allocator: BlockAllocator, block_size: int):
        self.allocator = allocator
        self.block_size = block_size
        self.by_hash: dict[str, CachedBlock] = {}
        self.hash_of_block: dict[int, str] = {}
        allocator.is_cached = lambda block: block in self.hash_of_block
        allocator.on_evict = self._forget
        self.hits = 0

    def _forget(self, block: int) -> None:
        del self.by_hash[self.hash_of_block.pop(block)]

    def match(self, tokens: Sequence[int], max_blocks: int) -> list[int]:
        """Physical blocks of the longest cached chain of full blocks of ``tokens`` (at most
        ``max_blocks``), each verified token by token. Takes a reference to each."""
        found: list[int] = []
        parent = ROOT_HASH
        for i in range(max_blocks):
            chunk = tuple(tokens[i * self.block_size : (i + 1) * self.block_size])
            h = block_hash(parent, chunk)
            entry = self.by_hash.get(h)
            if entry is None or entry.tokens != chunk or entry.parent != parent:
                break
            found.append(entry.block)
            parent = h
        for block in found:
            self.allocator.share(block)
        self.hits += len(found)
        return found

    def commit(self, tokens: Sequence[int], block_table: list[int], first: int, last: int) -> None:
        """Index the full blocks ``first..last-1`` of a sequence, whose KV is written."""
        parent = ROOT_HASH
        for i in range(last):
            chunk = tuple(tokens[i * self.block_size : (i + 1) * self.block_size])
            h = block_hash(parent, chunk)
            block = block_table[i]
            if i >= first and h not in self.by_hash and block not in self.hash_of_block:
                self.by_hash[h] = CachedBlock(block, parent, chunk)
                self.hash_of_block[block] = h
            parent = h
