"""Planted bugs: copies of the reference engine, each with ONE bug of a property's kind.

Each attribute is a zero-argument factory, so a corpus file can name it as
``planted:<attr>`` and ``fuzzcache replay`` resolves it (tests/ is on sys.path in pytest).
"""

from __future__ import annotations

import dataclasses

import torch

from fuzzcache.engine import batching, fused_step, kv_cache, paged, speculative
from fuzzcache.engine.drafts import NGramDraft, make_draft
from fuzzcache.engine.ops import DEFAULT_OPS
from fuzzcache.engine.scheduler import Scheduler
from fuzzcache.engine.prefix_cache import PrefixCache
from fuzzcache.targets.reference import ReferenceTarget


def with_ops(name: str, **ops) -> ReferenceTarget:
    return ReferenceTarget(name=f"planted:{name}", ops=dataclasses.replace(DEFAULT_OPS, **ops))


# ---- bugs in single operations -------------------------------------------------------------


def chunk_relative_forward(model, rows):
    """Positions restart at 0 in every row: later prefill chunks get chunk-relative positions."""
    relative = [batching.Row(r.tokens, r.cache) for r in rows]
    out = []
    for r in relative:
        ids = torch.tensor([r.tokens])
        pos = torch.arange(len(r.tokens))[None] + (r.start if len(r.tokens) == 1 else 0)
        logits, present = model(ids, pos, past_kvs=r.cache)
        out.append((logits[0], [(k[:, :, -len(r.tokens) :], v[:, :, -len(r.tokens) :]) for k, v in present]))
    return out


def ragged_positions_from_longest(model, rows):
    """Every row's positions start at the longest cache, not its own: ragged rows drift."""
    start = max(r.start for r in rows)
    shifted = []
    for r in rows:
        pad = start - r.start
        cache = r.cache
        if pad and cache is not None:
            cache = [(torch.cat([k[:, :, :1].expand(-1, -1, pad, -1), k], 2), torch.cat([v[:, :, :1].expand(-1, -1, pad, -1), v], 2)) for k, v in cache]
        shifted.append(batching.Row(r.tokens, cache))
    return batching.ragged_forward(model, shifted)


def forward_seeing_padding(model, rows):
    """The fused step's cache mask is ignored: each row also sees the zero padding of shorter caches."""
    original = model.forward

    def leaky(tokens, positions, past_kvs=None, cache_mask=None, input_mask=None):
        return original(tokens, positions, past_kvs=past_kvs, cache_mask=None, input_mask=input_mask)

    model.forward = leaky
    try:
        return batching.ragged_forward(model, rows)
    finally:
        del model.forward


def decode_off_by_one_after(n: int):
    def decode(model, token, cache):
        """Past ``n`` cached positions, the new token is placed one position too far."""
        start = kv_cache.cache_len(cache) + (1 if kv_cache.cache_len(cache) >= n else 0)
        logits, present = model(torch.tensor([[token]]), torch.tensor([[start]]), past_kvs=cache)
        return logits[0, -1], present

    return decode


def trim_keeps_one_more(cache, n):
    """Trim keeps one rejected draft's entry."""
    return kv_cache.trim(cache, min(n + 1, kv_cache.cache_len(cache)))


def gather_floor_blocks(pool, block_table, n):
    """Counts the blocks to read with floor division: a partly filled last block is skipped."""
    return paged.gather(pool, block_table, (n // pool.block_size) * pool.block_size)


def chunked_prefill_relative(model, tokens, chunk_size, cache=None):
    """Each chunk is placed at positions 0..len-1 instead of its absolute positions."""
    rows = []
    for s in range(0, len(tokens), chunk_size):
        chunk = tokens[s : s + chunk_size]
        logits, cache = model(torch.tensor([chunk]), torch.arange(len(chunk))[None], past_kvs=cache)
        rows.append(logits[0])
    return torch.cat(rows), cache


def verify_one_too_many(target_logits, drafts):
    """After the first mismatch the draft token is accepted anyway, one too many."""
    emitted, accepted = speculative.greedy_verify(target_logits, drafts)
    if accepted < len(drafts):
        emitted = emitted[:-1] + [drafts[accepted]]
        accepted += 1
        if accepted < len(drafts) + 1:
            emitted.append(int(target_logits[accepted].argmax()))
    return emitted, accepted


def residual_from_target(target_probs, draft_probs, drafts, generator):
    """On rejection, resamples from the target p instead of max(0, p - q)."""
    patched = draft_probs.clone()
    out = []
    for i, tok in enumerate(drafts):
        p, q = target_probs[i], patched[i]
        if torch.rand((), generator=generator) < (p[tok] / q[tok].clamp_min(1e-12)).clamp(max=1.0):
            out.append(tok)
            continue
        out.append(int(torch.multinomial(p, 1, generator=generator)))
        return out
    out.append(int(torch.multinomial(target_probs[len(drafts)], 1, generator=generator)))
    return out


class UnnormalisedNGram(NGramDraft):
    def get_probs(self, *context):
        """Add-one counts divided by the raw count total: not a distribution."""
        ctx = tuple(context[-(self.n - 1) :])
        counts = self.counts[ctx] if ctx in self.counts else torch.zeros(self.vocab_size)
        return (counts + self.alpha) / max(float(counts.sum()), 1.0)


def unnormalised_drafts(name, vocab_size, tokens):
    if name in ("bigram", "trigram"):
        return UnnormalisedNGram(2 if name == "bigram" else 3, vocab_size).fit(tokens)
    return make_draft(name, vocab_size, tokens)


def run_step_leaky_when_fused(model, rows, is_decode, interleave, forward):
    """Only the fused (interleaved) forward leaks padding into other rows."""
    return fused_step.run_step(model, rows, is_decode, interleave, forward_seeing_padding if interleave else forward)


# ---- bugs in the engine's bookkeeping ------------------------------------------------------


class PrefixCacheThatNeverHits(PrefixCache):
    """Silently disabled: outputs stay right, only the hit count shows it."""

    def match(self, tokens, max_blocks):
        return []


class UnchainedPrefixCache(PrefixCache):
    """Block hashes ignore the parent block and the token check is skipped: equal blocks after
    different prefixes collide."""

    def match(self, tokens, max_blocks):
        found = []
        for i in range(max_blocks):
            chunk = tuple(tokens[i * self.block_size : (i + 1) * self.block_size])
            entry = next((e for e in self.by_hash.values() if e.tokens == chunk), None)
            if entry is None:
                break
            found.append(entry.block)
        for block in found:
            self.allocator.share(block)
        return found


class StaleTableScheduler(Scheduler):
    """Preemption frees the blocks but keeps the block table: the re-prefill writes into blocks
    that now belong to other requests (use after free)."""

    def preempt(self, seq):
        table = list(seq.block_table)
        super().preempt(seq)
        seq.block_table = table

    def release(self, seq):
        for block in seq.block_table:
            if self.allocator.ref_count[block] > 0:
                self.allocator.deallocate(block)
        seq.block_table = []


class StaleTableTarget(ReferenceTarget):
    scheduler_class = StaleTableScheduler


# ---- the planted targets, one per property ---------------------------------------------------

PLANTED = {
    "engine.trace": lambda: with_ops("chunk_relative_positions", ragged_forward=chunk_relative_forward),
    "engine.same.chunked": lambda: with_ops("chunk_relative_positions", ragged_forward=chunk_relative_forward),
    "engine.same.prefix_cache": lambda: with_ops("unchained_prefix_hash", prefix_cache_class=UnchainedPrefixCache),
    "engine.same.speculative": lambda: with_ops("verify_one_too_many", greedy_verify=verify_one_too_many),
    "engine.same.fused": lambda: with_ops("fused_mask_leak", run_step=run_step_leaky_when_fused),
    "engine.same.pool": lambda: StaleTableTarget(name="planted:stale_block_table_after_preemption"),
    "prefix.hit": lambda: with_ops("prefix_never_hits", prefix_cache_class=PrefixCacheThatNeverHits),
    "kv.recompute": lambda: with_ops("decode_off_by_one_after_12", decode_one_token=decode_off_by_one_after(12)),
    "batch.ragged": lambda: with_ops("ragged_positions_from_longest", ragged_forward=ragged_positions_from_longest),
    "kv.trim": lambda: with_ops("trim_keeps_one_more", trim=trim_keeps_one_more),
    "paged.gather": lambda: with_ops("gather_floor_blocks", gather=gather_floor_blocks),
    "prefill.chunked": lambda: with_ops("chunked_prefill_relative", chunked_prefill=chunked_prefill_relative),
    "spec.greedy": lambda: with_ops("verify_one_too_many", greedy_verify=verify_one_too_many),
    "draft.normalized": lambda: with_ops("unnormalised_drafts", make_draft=unnormalised_drafts),
    "step.fused": lambda: with_ops("fused_mask_leak", ragged_forward=forward_seeing_padding),
    "spec.distribution": lambda: with_ops("residual_from_target", speculative_sample=residual_from_target),
}

# module-level factories, so ``planted:<property id with dots as underscores>`` resolves
for _pid, _factory in PLANTED.items():
    globals()[_pid.replace(".", "_")] = _factory
