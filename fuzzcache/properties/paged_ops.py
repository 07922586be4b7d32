"""Paged KV properties.

paged.gather    -- seed test 3 generalised: decode through a block pool with any block size,
                   prompt length and physical block order; every step equals the full
                   recompute. Unused slots are NaN, so reading one past the end shows.
paged.roundtrip -- KV tensors (hypothesis-torch) scattered in pieces come back exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from fuzzcache.coverage import reached
from fuzzcache.findings import mismatch
from fuzzcache.engine.paged import BlockPool, blocks_needed
from fuzzcache.model import ModelConfig
from fuzzcache.properties.op_support import SEED_MODEL, assert_logits_close, model_for, oracle_logits, ops_of, tokens_of
from fuzzcache.properties.registry import Property, register
from fuzzcache.strategies.lengths import block_sizes, prompt_lengths
from fuzzcache.strategies.model import kv_tensors, model_configs

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


@dataclass(frozen=True)
class RoundTripScenario:
    block_size: int
    keys: tuple[tuple[tuple[float, ...], ...], ...]  # (H_kv, T, D) as nested tuples, so it is JSON
    block_order: tuple[int, ...]
    written_in: tuple[int, ...]  # split of T into consecutive scatter calls (chunks, decode steps)

    def short(self) -> str:
        h, t, d = len(self.keys), len(self.keys[0]), len(self.keys[0][0])
        return f"T={t} block={self.block_size} heads={h} dim={d} writes={list(self.written_in)}"


def check_roundtrip(target, s: RoundTripScenario) -> None:
    """KV written by scatter in pieces comes back from gather exactly, in logical order; the
    slot after the last written one still reads NaN."""
    ops = ops_of(target)
    k = torch.tensor(s.keys, dtype=torch.float32)[None]  # (1, H_kv, T, D)
    h, t, d = k.shape[1:]
    config = ModelConfig(n_layer=1, n_head=h, n_kv_head=h, head_dim=d)
    pool = BlockPool(config, len(s.block_order), s.block_size, torch.float32, "cpu")
    allocator = ops.allocator_class(pool)
    allocator.free = list(s.block_order)
    table = [allocator.allocate() for _ in range(blocks_needed(t + 1, s.block_size))]
    start = 0
    for n in s.written_in:
        ops.scatter(pool, table, start, [(k[:, :, start : start + n], -k[:, :, start : start + n])])
        start += n
    (gk, gv), = ops.gather(pool, table, t)
    if gk.shape != k.shape or not torch.equal(gk, k) or not torch.equal(gv, -k):
        raise mismatch(f"gather of {t} positions did not return what scatter wrote", positions=t)
    (past_k, _), = ops.gather(pool, table, t + 1)
    if past_k.shape[2] != t + 1 or not torch.isnan(past_k[:, :, t]).all():
        raise mismatch(f"position {t} was never written but does not read as NaN")
    reached("paged.roundtrip: a block crossed mid-write" if any(
        (sum(s.written_in[:i]) // s.block_size) != ((sum(s.written_in[: i + 1]) - 1) // s.block_size) for i in range(len(s.written_in))) else "paged.roundtrip: writes within blocks")


@st.composite
def roundtrip_scenarios(draw):
    block = draw(block_sizes())
    t = draw(prompt_lengths(block, 20))
    keys = draw(kv_tensors(draw(st.integers(1, 2)), t, draw(st.integers(1, 4))))  # hypothesis-torch
    n_blocks = blocks_needed(t + 1, block) + draw(st.integers(0, 2))
    order = list(range(n_blocks))
    shuffle = draw(st.integers(0, 2**16))
    if shuffle:
        random.Random(shuffle).shuffle(order)
    cuts, left = [], t
    while left:
        cuts.append(draw(st.integers(1, left)))
        left -= cuts[-1]
    return RoundTripScenario(block, tuple(map(tuple, (map(tuple, head) for head in keys[0].tolist()))), tuple(order), tuple(cuts))


register(Property(
    id="paged.roundtrip", level="op", description="scatter then gather through a shuffled block table returns the KV exactly; unwritten slots are NaN",
    scenario_type=RoundTripScenario, strategy=lambda t: roundtrip_scenarios(), check=check_roundtrip,
))
