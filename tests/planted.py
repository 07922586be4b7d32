"""Planted bugs for the tests: for each property, a mutant of the reference engine with ONE
bug of that property's kind (mostly from the bug zoo, fuzzcache.mutants), plus a few
op-level bugs the zoo does not need. Attributes are zero-argument factories, so corpus
files can name them as ``planted:<attr>`` (tests/ is on sys.path under pytest)."""

from __future__ import annotations

import dataclasses

import torch

from fuzzcache.contract import LIFECYCLE
from fuzzcache.engine import batching, fused_step
from fuzzcache.engine.ops import DEFAULT_OPS
from fuzzcache.mutants import (  # noqa: F401  (re-exported for tests/test_seed_checks.py)
    NeverHitPrefixCache as PrefixCacheThatNeverHits,
    StaleTableScheduler,
    UnchainedPrefixCache,
    build,
    decode_position_skips_after_12,
    gather_floor_blocks,
    residual_from_target,
    trim_keeps_one_rejected as trim_keeps_one_more,
    unnormalised_drafts,
    verify_one_too_many,
)
from fuzzcache.surgery.memory_model import MemoryModel
from fuzzcache.surgery.memory_ops import run_script
from fuzzcache.targets.hf import planted as hf_planted
from fuzzcache.targets.hf.target import HFTarget
from fuzzcache.targets.reference import ReferenceTarget


def with_ops(name: str, **ops) -> ReferenceTarget:
    return ReferenceTarget(name=f"planted:{name}", ops=dataclasses.replace(DEFAULT_OPS, **ops))


class AddRangeOneShort(MemoryModel):
    """seq_add over [p0, p1 - 1) where a finite p1 was asked: the entry at p1 - 1 stays."""

    def add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        super().add(seq, p0, p1 - 1 if p1 > 0 else p1, delta)


class MemoryModelEngine(HFTarget):
    """hf:llama plus an engine for surgery.memory's scripts built on ``MemoryModel`` over the same
    weights (right by construction: the oracle's own model of a memory), or a planted copy of it.
    llama.cpp cannot be the correct engine here: it fails the property on its own upstream bugs
    (tests/test_llamacpp_target.py plants bugs in its wrapper instead)."""

    memory_seqs = 4

    def __init__(self, name: str, memory_class=MemoryModel):
        super().__init__("llama", name=name)
        self.memory_class = memory_class

    def run_memory_script(self, scenario, probe_seqs):
        return run_script(self.memory_class(self.model), scenario, self.memory_seqs, probe_seqs)


def memory_model_engine():
    return MemoryModelEngine("planted:memory_model_engine")


def decode_off_by_one_after(n: int):
    assert n == 12, "the zoo's decode mutant shifts after 12 cached positions"
    return decode_position_skips_after_12


def chunk_relative_forward(model, rows):
    """Every multi-token row with a cache gets positions from 0 (later chunks, verify rows)."""
    out = []
    for r in rows:
        pos = torch.arange(len(r.tokens))[None] + (r.start if len(r.tokens) == 1 else 0)
        logits, present = model(torch.tensor([r.tokens]), pos, past_kvs=r.cache)
        out.append((logits[0], [(k[:, :, -len(r.tokens) :], v[:, :, -len(r.tokens) :]) for k, v in present]))
    return out


def forward_seeing_padding(model, rows):
    """The cache mask is ignored: each row also sees the zero padding of shorter caches."""
    original = model.forward
    model.forward = lambda tokens, positions, past_kvs=None, cache_mask=None, input_mask=None: original(tokens, positions, past_kvs=past_kvs, input_mask=input_mask)
    try:
        return batching.ragged_forward(model, rows)
    finally:
        del model.forward


def run_step_leaky_when_fused(model, rows, is_decode, interleave, forward):
    return fused_step.run_step(model, rows, is_decode, interleave, forward_seeing_padding if interleave else forward)


def chunked_prefill_relative(model, tokens, chunk_size, cache=None):
    """Each chunk is placed at positions 0..len-1 instead of its absolute positions."""
    rows = []
    for s in range(0, len(tokens), chunk_size):
        chunk = tokens[s : s + chunk_size]
        logits, cache = model(torch.tensor([chunk]), torch.arange(len(chunk))[None], past_kvs=cache)
        rows.append(logits[0])
    return torch.cat(rows), cache


def without_lifecycle(target):
    """The target with stop, abort and fork undrawn. The stale-block-table bug needs none of them,
    and from some draws the minimizer stops one token above its minimum (a 9-token 1-minimal form,
    docs/mutation-score.md); this keeps the search on the draws it took before the lifecycle."""
    target.features = target.features - LIFECYCLE
    return target


PLANTED = {
    "engine.trace": lambda: build("chunk_relative_positions"),
    "engine.same.chunked": lambda: build("chunk_relative_positions"),
    "engine.same.prefix_cache": lambda: build("prefix_hash_not_chained"),
    "engine.same.speculative": lambda: build("spec_accepts_one_too_many"),
    "engine.same.fused": lambda: build("fused_mask_sees_padding"),
    "engine.same.pool": lambda: without_lifecycle(build("preempt_keeps_stale_block_table")),
    "prefix.hit": lambda: build("prefix_never_hits"),
    "kv.recompute": lambda: build("kv_decode_position_skips_after_12"),
    "batch.ragged": lambda: build("batch_positions_from_longest"),
    "kv.trim": lambda: build("kv_trim_keeps_one_rejected"),
    "paged.gather": lambda: build("paged_gather_floor_blocks"),
    "paged.roundtrip": lambda: build("paged_gather_floor_blocks"),
    "prefill.chunked": lambda: with_ops("chunked_prefill_relative", chunked_prefill=chunked_prefill_relative),
    "spec.greedy": lambda: build("spec_accepts_one_too_many"),
    "draft.normalized": lambda: build("draft_unnormalised"),
    "step.fused": lambda: with_ops("fused_mask_leak", ragged_forward=forward_seeing_padding),
    "spec.distribution": lambda: build("spec_residual_from_target"),
    # between a multi-path target's own paths: HF transformers with one path broken
    "paths.static": lambda: hf_planted.positions_skip_on_static(),
    "paths.batched": lambda: hf_planted.positions_skip_on_batched(),
    "paths.continuous": lambda: hf_planted.positions_skip_on_continuous(),
    "surgery.rope.model": lambda: build("surgery_theta_without_scaling"),
    "surgery.rope.compose": lambda: build("surgery_fp32_angles"),
    "surgery.rope.bos": lambda: build("surgery_rotates_bos"),
    "surgery.document": lambda: build("surgery_offset_off_by_one"),
    "surgery.suffix": lambda: build("surgery_suffix_positions_from_1"),
    "surgery.nll": lambda: build("surgery_nll_wrong_slice"),
    "surgery.bpe": lambda: build("surgery_split_unchecked"),
    "surgery.memory": lambda: MemoryModelEngine("planted:surgery_memory", AddRangeOneShort),
}

# the correct target each planted bug is a copy of (the reference engine unless named here)
CORRECT = {"paths.static": "hf:llama", "paths.batched": "hf:llama", "paths.continuous": "hf:llama",
           "surgery.memory": "planted:memory_model_engine"}

# module-level factories, so ``planted:<property id with dots as underscores>`` resolves
for _pid, _factory in PLANTED.items():
    globals()[_pid.replace(".", "_")] = _factory
