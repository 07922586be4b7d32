"""paged.gather -- seed test 3 generalised: decode through a block pool with any block size,
prompt length and physical block order; every step equals the full recompute. Unused slots
are NaN, so reading one past the end shows."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from fuzzcache.coverage import reached
from fuzzcache.engine.paged import BlockPool, blocks_needed
from fuzzcache.model import ModelConfig
from fuzzcache.properties.op_support import SEED_MODEL, assert_logits_close, model_for, oracle_logits, ops_of, tokens_of
from fuzzcache.properties.registry import Property, register
from strategies.lengths import block_sizes, prompt_lengths
from strategies.model import model_configs

VOCAB = SEED_MODEL.vocab_size


@dataclass(frozen=True)
class PagedScenario:
    model: ModelConfig
    block_size: int
    prompt: tuple[int, ...]
    max_new_tokens: int
    block_order: tuple[int, ...]  # the allocator's free list: physical blocks in allocation order

    def short(self) -> str:
        return f"prompt={len(self.prompt)} block={self.block_size} new={self.max_new_tokens}"


def check_paged(target, s: PagedScenario) -> None:
    model, ops = model_for(target, s.model), ops_of(target)
    pool = BlockPool(model.config, len(s.block_order), s.block_size, model.dtype, model.device)
    allocator = ops.allocator_class(pool)
    allocator.free = list(s.block_order)
    table: list[int] = []

    def ensure(n_positions: int) -> None:
        while len(table) < blocks_needed(n_positions, s.block_size):
            table.append(allocator.allocate())

    logits, cache = ops.prefill(model, list(s.prompt))
    ensure(len(s.prompt))
    ops.scatter(pool, table, 0, [(k, v) for k, v in cache])
    rows, tokens = [logits[-1]], [int(logits[-1].argmax())]
    filled = len(s.prompt)
    if filled % s.block_size == 0:
        reached("paged: prompt fills its last block exactly")
    while len(tokens) < s.max_new_tokens:
        ensure(filled + 1)
        gathered = ops.gather(pool, table, filled)
        logits, full = ops.prefill(model, [tokens[-1]], gathered)
        ops.scatter(pool, table, filled, [(k[:, :, -1:], v[:, :, -1:]) for k, v in full])
        filled += 1
        rows.append(logits[-1])
        tokens.append(int(logits[-1].argmax()))
    p = len(s.prompt)
    assert_logits_close("paged decode vs full recompute", torch.stack(rows), oracle_logits(model, list(s.prompt) + tokens)[p - 1 : p - 1 + len(tokens)], target)


@st.composite
def paged_scenarios(draw):
    block = draw(block_sizes())
    prompt_len = draw(prompt_lengths(block, 24))
    new = draw(st.integers(1, 8))
    n_blocks = blocks_needed(prompt_len + new, block) + draw(st.integers(0, 2))
    shuffle = draw(st.integers(0, 2**16))  # one choice whatever n_blocks is, so block sizes shrink freely
    order = list(range(n_blocks))
    if shuffle:
        random.Random(shuffle).shuffle(order)
    prompt = draw(st.lists(st.integers(0, VOCAB - 1), min_size=prompt_len, max_size=prompt_len))
    return PagedScenario(draw(model_configs()), block, tuple(prompt), new, tuple(order))


register(Property(
    id="paged.gather", level="op", description="paged KV (gather / scatter over a block pool) == full recompute (seed 3)",
    scenario_type=PagedScenario, strategy=lambda t: paged_scenarios(), check=check_paged,
    examples=tuple(PagedScenario(SEED_MODEL, 4, tuple(tokens_of(VOCAB, n, n)), 6, tuple(range(4))) for n in (3, 4, 5, 7, 8)),
))
