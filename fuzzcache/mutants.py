"""The bug zoo: copies of the reference engine, each with ONE plausible, silent bug of a kind
seen in real engines. Each is the target ``mutant:<name>``.

Every mutant documents its bug and its true minimal trigger, worked out by hand: the
property that kills it first (in registry order) and the smallest scenario, in that
property's short form, that exposes it. ``fuzzcache mutants`` checks the fuzzer's shrunk
repro against it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from fuzzcache.engine import batching, fused_step, kv_cache, paged, speculative
from fuzzcache.engine.drafts import NGramDraft, make_draft
from fuzzcache.engine.ops import DEFAULT_OPS
from fuzzcache.engine.prefix_cache import ROOT_HASH, CachedBlock, PrefixCache
from fuzzcache.engine.scheduler import Scheduler
from fuzzcache.targets import UnknownTarget
from fuzzcache.targets.reference import ReferenceTarget


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # the fast path it breaks
    bug: str  # one line
    triggers: tuple[str, ...]  # equally minimal triggers, "<property>: <short form>"
    make: Callable[..., ReferenceTarget]  # (**target options) -> the mutant target
    # Where one finding kind of this bug needs more than ``triggers`` (the minimizer keeps a
    # finding's kind, so its repro is held to these): kind -> that kind's minimal triggers.
    triggers_of_kind: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def documented(self, kind: str) -> tuple[str, ...]:
        """The minimal triggers a repro of ``kind`` is held to."""
        return self.triggers_of_kind.get(kind, self.triggers)


ZOO: dict[str, Mutant] = {}


def mutant(name: str, path: str, bug: str, *triggers: str, ops: dict | None = None, scheduler: type | None = None,
           surgery: dict | None = None, triggers_of_kind: dict[str, tuple[str, ...]] | None = None) -> None:
    def make(**options) -> ReferenceTarget:
        surgery_ops = None
        if surgery:
            from fuzzcache.surgery.ops import DEFAULT_SURGERY

            surgery_ops = dataclasses.replace(DEFAULT_SURGERY, **surgery)
        target = ReferenceTarget(name=f"mutant:{name}", ops=dataclasses.replace(DEFAULT_OPS, **(ops or {})), surgery=surgery_ops, **options)
        if scheduler is not None:
            target.scheduler_class = scheduler
        return target

    ZOO[name] = Mutant(name, path, bug, triggers, make, triggers_of_kind or {})


def build(name: str, **options) -> ReferenceTarget:
    """The target ``mutant:<name>``."""
    if name not in ZOO:
        raise UnknownTarget(f"unknown mutant {name!r}; the zoo has: {', '.join(ZOO)}")
    return ZOO[name].make(**options)


# ---- helpers: a model whose forward is altered for one call ------------------------------------


def _with_forward(model, alter: Callable, call: Callable):
    """Run ``call()`` while ``model.forward`` goes through ``alter(original, *args, **kw)``."""
    original = model.forward
    model.forward = lambda *a, **kw: alter(original, *a, **kw)
    try:
        return call()
    finally:
        del model.forward


# ---- KV cache ---------------------------------------------------------------------------------


def append_drops_oldest_past_16(cache, new):
    out = kv_cache.append(cache, new)
    if kv_cache.cache_len(out) > 16:
        out = [(k[:, :, 1:], v[:, :, 1:]) for k, v in out]  # a sliding window nobody asked for
    return out


def decode_position_skips_after_12(model, token, cache):
    start = kv_cache.cache_len(cache)
    start += start >= 12  # the new token lands one position too far
    logits, present = model(torch.tensor([[token]], device=model.device), torch.tensor([[start]], device=model.device), past_kvs=cache)
    return logits[0, -1], present


def trim_keeps_one_rejected(cache, n):
    return kv_cache.trim(cache, min(n + 1, kv_cache.cache_len(cache)))


mutant("kv_append_drops_oldest_past_16", "kv", "append drops the oldest position once the cache exceeds 16",
       # the 3rd decode after 17 cached positions: prompt + new = 19 (new <= 6 in batch.ragged)
       *(f"batch.ragged: prompts=[{19 - n}] new={n}" for n in (6, 5, 4, 3)), ops={"append": append_drops_oldest_past_16})
mutant("kv_decode_position_skips_after_12", "kv", "decode places the new token one position too far once 12 are cached",
       # a decode with 12 cached positions: prompt + new = 14, new >= 2 (new <= 10 in kv.recompute)
       *(f"kv.recompute: prompt={14 - n} new={n} model=learned/h1kv1" for n in range(10, 1, -1)),
       ops={"decode_one_token": decode_position_skips_after_12})
mutant("kv_trim_keeps_one_rejected", "kv", "trim after verify keeps one rejected draft's entry",
       "kv.trim: prompt=1 decoded=0 k=1 accepted=0", ops={"trim": trim_keeps_one_rejected})


# ---- batching ---------------------------------------------------------------------------------


def ragged_positions_from_longest(model, rows):
    def alter(original, tokens, positions, past_kvs=None, cache_mask=None, input_mask=None):
        if cache_mask is not None:  # every row counts positions from the longest cache
            positions = positions + ((cache_mask.shape[1] - cache_mask.sum(1))[:, None] * input_mask)
        return original(tokens, positions, past_kvs=past_kvs, cache_mask=cache_mask, input_mask=input_mask)

    return _with_forward(model, alter, lambda: batching.ragged_forward(model, rows))


def ragged_rows_swapped(model, rows):
    results = batching.ragged_forward(model, rows)
    if len({len(r.tokens) for r in rows}) > 1:
        results = results[::-1]  # unstacked in the wrong order when lengths differ
    return results


mutant("batch_positions_from_longest", "batching", "a ragged batch gives every row positions counted from the longest cache",
       "batch.ragged: prompts=[1, 2] new=2", ops={"ragged_forward": ragged_positions_from_longest})
mutant("batch_rows_swapped_when_ragged", "batching", "rows of a batch come back in the wrong order when their lengths differ",
       "batch.ragged: prompts=[1, 2] new=1", ops={"ragged_forward": ragged_rows_swapped})


# ---- paged KV ---------------------------------------------------------------------------------


def gather_floor_blocks(pool, block_table, n):
    return paged.gather(pool, block_table, (n // pool.block_size) * pool.block_size)  # ceil was meant


mutant("paged_gather_floor_blocks", "paged", "gather counts blocks with floor division and skips a partly filled last block",
       "paged.gather: prompt=1 block=2 new=2", ops={"gather": gather_floor_blocks})


# ---- prefix cache -----------------------------------------------------------------------------


class UnchainedPrefixCache(PrefixCache):
    """Looks blocks up by their own tokens only, not chained to the parent block."""

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


def weak_hash(parent: str, tokens) -> str:
    return str((int(parent or "0") * 31 + sum(tokens)) % 64)


class WeakHashPrefixCache(PrefixCache):
    """A 6-bit hash of the token sum, and hits trusted without the token check."""

    def match(self, tokens, max_blocks):
        found, parent = [], ROOT_HASH
        for i in range(max_blocks):
            h = weak_hash(parent, tokens[i * self.block_size : (i + 1) * self.block_size])
            if h not in self.by_hash:
                break
            found.append(self.by_hash[h].block)
            parent = h
        for block in found:
            self.allocator.share(block)
        return found

    def commit(self, tokens, block_table, first, last):
        parent = ROOT_HASH
        for i in range(last):
            chunk = tuple(tokens[i * self.block_size : (i + 1) * self.block_size])
            h = weak_hash(parent, chunk)
            if i >= first and h not in self.by_hash and block_table[i] not in self.hash_of_block:
                self.by_hash[h] = CachedBlock(block_table[i], parent, chunk)
                self.hash_of_block[block_table[i]] = h
            parent = h


class EarlyCommitScheduler(Scheduler):
    """Commits blocks to the prefix cache when they are allocated, before their KV is written,
    so a request admitted in the same step reads them unwritten."""

    def grow(self, seq, n_blocks):
        super().grow(seq, n_blocks)
        if self.prefix is not None:
            full = min(len(seq.block_table), len(seq.tokens) // self.config.block_size)
            self.prefix.commit(seq.tokens, seq.block_table, seq.committed_blocks, full)
            seq.committed_blocks = max(seq.committed_blocks, full)


class NeverHitPrefixCache(PrefixCache):
    """Silently disabled: outputs stay right, only the hit count shows it."""

    def match(self, tokens, max_blocks):
        return []


# Request 0 = [0] commits block (0); request 1 = [0, 0, x] computed after it: its second block
# (0) after parent (0) must miss, but an unchained (or weak) hash hits request 0's first block.
# Or one request of two continuations run one at a time: the second recomputes [0, 0] and hits the
# first's block (0) for its second block.
PREFIX_COLLISION = tuple(
    f"{prop}: {trace}" for prop in ("engine.trace", "engine.same.prefix_cache")
    for trace in (*(f"[prompt=1 new=1] [prompt=3 new=1{arrival}] block_size=1{budget} prefix_cache=True"
                    for arrival, budget in ((" at=1", ""), ("", " max_batch_tokens=1"))),
                  "[prompt=2 new=2 n=2] block_size=1 max_num_seqs=1 prefix_cache=True")
)
mutant("prefix_hash_not_chained", "prefix_cache", "block hash ignores the parent block: equal blocks after different prefixes collide",
       *PREFIX_COLLISION, ops={"prefix_cache_class": UnchainedPrefixCache})
mutant("prefix_weak_hash_no_token_check", "prefix_cache", "a weak block hash ((parent * 31 + token sum) mod 64) trusted without the token check",
       *PREFIX_COLLISION, ops={"prefix_cache_class": WeakHashPrefixCache})
mutant("prefix_same_step_reads_unwritten", "prefix_cache", "a request admitted in the same step as another with a shared prefix reads its blocks before they are written",
       *(f"{prop}: [prompt=1 new=1] [prompt=2 new=1] block_size=1 prefix_cache=True" for prop in ("engine.trace", "engine.same.prefix_cache")),
       scheduler=EarlyCommitScheduler)
mutant("prefix_never_hits", "prefix_cache", "the prefix cache never hits (outputs stay right; only the hit count shows it)",
       "prefix.hit: prompts=[1, 2] block=1 new=1", ops={"prefix_cache_class": NeverHitPrefixCache})


# ---- chunked prefill --------------------------------------------------------------------------


def run_step_chunk_relative(model, rows, is_decode, interleave, forward):
    """Prefill chunks after the first are given positions counted from the chunk start."""
    decode_of = {id(r): d for r, d in zip(rows, is_decode)}

    def relative(model, subset):
        def alter(original, tokens, positions, past_kvs=None, cache_mask=None, input_mask=None):
            positions = positions.clone()
            for b, row in enumerate(subset):
                if not decode_of[id(row)]:
                    pad = positions.shape[1] - len(row.tokens)
                    positions[b, pad:] = torch.arange(len(row.tokens), device=positions.device)
            return original(tokens, positions, past_kvs=past_kvs, cache_mask=cache_mask, input_mask=input_mask)

        return _with_forward(model, alter, lambda: forward(model, subset))

    return fused_step.run_step(model, rows, is_decode, interleave, relative)


class ShortLastChunkDropped(Scheduler):
    """When the rest of a prompt is shorter than the chunk size, only its last token is computed."""

    def work_for(self, seq, budget):
        remaining = len(seq.tokens) - seq.num_computed
        if self.config.chunk_size and 1 < remaining < self.config.chunk_size:
            seq.num_computed = len(seq.tokens) - 1  # the short chunk's other tokens are skipped
        return super().work_for(seq, budget)


mutant("chunk_relative_positions", "chunked_prefill", "later prefill chunks get positions relative to the chunk, not absolute",
       "step.fused: decode=[1] prefill=[2] done=[1] chunk=1", ops={"run_step": run_step_chunk_relative})
mutant("chunk_short_last_dropped", "chunked_prefill", "a short last chunk is dropped except for its final token",
       # any block size: it shrinks to block_size=1, the default 16 is as small
       "engine.trace: [prompt=2 new=1] block_size=1 chunk_size=3", "engine.trace: [prompt=2 new=1] chunk_size=3",
       scheduler=ShortLastChunkDropped)


# ---- speculative decoding ---------------------------------------------------------------------


def verify_one_too_many(target_logits, drafts):
    emitted, accepted = speculative.greedy_verify(target_logits, drafts)
    if accepted < len(drafts):  # the first rejected draft is accepted too
        emitted = emitted[:-1] + [drafts[accepted]]
        accepted += 1
        emitted.append(int(target_logits[accepted].argmax()))
    return emitted, accepted


def bonus_from_wrong_row(target_logits, drafts):
    emitted, accepted = speculative.greedy_verify(target_logits, drafts)
    if drafts and accepted == len(drafts):  # the bonus token is read from the last draft's row
        emitted[-1] = int(target_logits[len(drafts) - 1].argmax())
    return emitted, accepted


def residual_from_target(target_probs, draft_probs, drafts, generator):
    out = []
    for i, tok in enumerate(drafts):
        p, q = target_probs[i], draft_probs[i]
        if torch.rand((), generator=generator) < (p[tok] / q[tok].clamp_min(1e-12)).clamp(max=1.0):
            out.append(tok)
            continue
        out.append(int(torch.multinomial(p, 1, generator=generator)))  # p, not max(0, p - q)
        return out
    out.append(int(torch.multinomial(target_probs[len(drafts)], 1, generator=generator)))
    return out


mutant("spec_accepts_one_too_many", "speculative", "verification accepts the first rejected draft too",
       "spec.greedy: prompt=1 new=2 k=1 draft=planted accepts=[0]", ops={"greedy_verify": verify_one_too_many})
mutant("spec_bonus_from_wrong_row", "speculative", "when all drafts are accepted the bonus token is read from the last draft's row",
       "spec.greedy: prompt=1 new=2 k=1 draft=planted accepts=[1]", ops={"greedy_verify": bonus_from_wrong_row})
mutant("spec_residual_from_target", "speculative", "on rejection the sampler resamples from p instead of max(0, p - q)",
       "spec.distribution: vocab=2 k=1 start=0", "spec.distribution: vocab=2 k=1 start=1", ops={"speculative_sample": residual_from_target})


class UnnormalisedNGram(NGramDraft):
    def get_probs(self, *context):
        ctx = tuple(context[-(self.n - 1) :])
        counts = self.counts[ctx] if ctx in self.counts else torch.zeros(self.vocab_size)
        return (counts + self.alpha) / max(float(counts.sum()), 1.0)  # forgets the smoothing mass


def unnormalised_drafts(name, vocab_size, tokens):
    if name in ("bigram", "trigram"):
        return UnnormalisedNGram(2 if name == "bigram" else 3, vocab_size).fit(tokens)
    return make_draft(name, vocab_size, tokens)


mutant("draft_unnormalised", "speculative", "n-gram draft probabilities are divided by the raw count, not count + V",
       "draft.normalized: bigram vocab=2 corpus=[] context=[0]", ops={"make_draft": unnormalised_drafts})


# ---- fused step -------------------------------------------------------------------------------


def run_step_mask_leak(model, rows, is_decode, interleave, forward):
    """In a fused decode + prefill forward, the cache mask is ignored: rows see other rows' padding."""

    def leaky(model, rows):
        def alter(original, tokens, positions, past_kvs=None, cache_mask=None, input_mask=None):
            return original(tokens, positions, past_kvs=past_kvs, cache_mask=None, input_mask=input_mask)

        return _with_forward(model, alter, lambda: forward(model, rows))

    mixed = interleave and any(is_decode) and not all(is_decode)
    return fused_step.run_step(model, rows, is_decode, interleave, leaky if mixed else forward)


mutant("fused_mask_sees_padding", "fused", "the fused step's cache mask lets a prefill row see another row's cache padding",
       "step.fused: decode=[1] prefill=[1] done=[0] chunk=1", ops={"run_step": run_step_mask_leak})


# ---- preemption -------------------------------------------------------------------------------


class StaleTableScheduler(Scheduler):
    """Preemption frees the blocks but keeps the block table: the re-prefill writes into
    blocks that now belong to other requests (use after free)."""

    def preempt(self, seq):
        table = list(seq.block_table)
        super().preempt(seq)
        seq.block_table = table

    def release(self, seq):
        for block in reversed(seq.block_table):
            if self.allocator.ref_count[block] > 0:
                self.allocator.deallocate(block)
        seq.block_table = []


STALE_TABLE_REQUESTS = ("[prompt=1 new=3] [prompt=1 new=3 at=1]", "[prompt=1 new=3 at=1] [prompt=1 new=3]", "[prompt=2 new=2] [prompt=1 new=3]")
mutant("preempt_keeps_stale_block_table", "preemption", "a preempted request keeps its freed blocks and writes into them after re-admission",
       # minimal (8 tokens, wrong tokens): engine.trace / engine.same.pool by exhaustive search of two-request traces up to
       # 8 tokens (block 1-2, pool min to min+1); engine.same.prefix_cache by exhaustive search of two-request all-zero
       # traces (block 1-4, arrivals 0-2, pool min, min+1 or unbounded): with the prefix cache on, engine.trace passes
       # these traces and engine.same.prefix_cache fails them
       *(f"{prop}: {reqs} block_size=1 num_blocks=4" for prop in ("engine.trace", "engine.same.pool") for reqs in STALE_TABLE_REQUESTS),
       *(f"engine.same.prefix_cache: {reqs} block_size=1 num_blocks=4 prefix_cache=True" for reqs in STALE_TABLE_REQUESTS),
       # chunked 8-token forms the fuzzer found (the searches above had no chunking)
       *(f"{prop}: [prompt=3 new=1] [prompt=3 new=1 at=1] block_size=1 num_blocks=4 chunk_size=1"
         for prop in ("engine.trace", "engine.same.pool", "engine.same.chunked")),
       "engine.same.pool: [prompt=2 new=2] [prompt=3 new=1 at=1] block_size=1 num_blocks=4 chunk_size=1",
       # the NaN-logits form (a read of a freed, poisoned block: a contract breach) needs 9 tokens (the same search over
       # all-zero tokens, and three-request traces of all-zero tokens up to 8 tokens, arrivals 0-1, pool min or unbounded)
       triggers_of_kind={"contract": tuple(
           f"engine.same.prefix_cache: {reqs} block_size=3 num_blocks=2 prefix_cache=True" for reqs in (
               "[prompt=1 new=2 at=2] [prompt=1 new=5]", "[prompt=1 new=2 at=1] [prompt=2 new=4]", "[prompt=1 new=5] [prompt=1 new=2 at=2]",
               "[prompt=2 new=4] [prompt=1 new=2 at=1]", "[prompt=3 new=3] [prompt=1 new=2]"))},
       scheduler=StaleTableScheduler)


# ---- request lifecycle: stops, aborts, forks, leaks -------------------------------------------


def free_outright(allocator: paged.BlockAllocator, block: int) -> None:
    """Back to the free list, poisoned and out of the prefix cache, however many references it has."""
    if allocator.is_cached(block):
        allocator.on_evict(block)
    allocator.evictable.pop(block, None)
    allocator.ref_count[block] = 0
    allocator.pool.poison(block)
    if block not in allocator.free:
        allocator.free.append(block)


class AbortLeaksScheduler(Scheduler):
    """The abort path takes the request out of the engine but never frees its blocks."""

    def abort(self, seq):
        seq.stats["abort_phase"] = seq.abort_phase
        seq.aborted = True


class AbortFreesSharedScheduler(Scheduler):
    """An abort frees the request's blocks outright, though another request still holds them
    through the prefix cache."""

    def abort(self, seq):
        for block in seq.block_table:
            free_outright(self.allocator, block)
        seq.block_table = []
        super().abort(seq)


class StopBeforeWriteScheduler(Scheduler):
    """A request whose step emits a stop token is retired before that step's KV is written: its
    full blocks are in the prefix cache already, unwritten."""

    def write_and_advance(self, w, logits, new_kv):
        emitted = self.ops.greedy_verify(logits, w.drafts)[0] if w.drafts else (
            [int(logits[-1].argmax())] if w.seq.num_computed + w.n == len(w.seq.tokens) else [])
        if any(t in w.seq.request.stop for t in emitted):
            self.advance(w, logits)
            return
        super().write_and_advance(w, logits, new_kv)


class CopyNotUsedScheduler(Scheduler):
    """Copy-on-write makes the copy, but the block table keeps the shared block: the fork writes
    into the block its siblings read, and the copy is never used (nor freed)."""

    def prepare(self, work):
        table = work.seq.block_table
        for i in self.shared_blocks_written(work):
            self.pool.copy_block(table[i], self.allocator.allocate())  # table[i] = copy forgotten
        self.grow(work.seq, self.new_blocks_needed(work))


class ForkWithoutReferenceScheduler(Scheduler):
    """A fork copies its parent's block table without taking a reference to any block."""

    def fork(self, parent):
        share, self.allocator.share = self.allocator.share, lambda block: None
        try:
            super().fork(parent)
        finally:
            self.allocator.share = share


class StopOneLateScheduler(Scheduler):
    """The stop check looks at the token before the last: a request runs one token past its stop."""

    def check_stop(self, seq):
        first = next((i for i, t in enumerate(seq.output) if t in seq.request.stop), None)
        if first is not None and len(seq.output) >= first + 2:
            del seq.output[first + 2 :], seq.logits[first + 2 :]
            seq.stopped = True


class PreemptForkFreesSharedScheduler(Scheduler):
    """Preempting one of a request's n continuations frees every block it holds outright, the
    ones its siblings still share too."""

    def preempt(self, seq):
        if seq.request.n > 1:
            for block in seq.block_table:
                free_outright(self.allocator, block)
            seq.block_table = []
        super().preempt(seq)


# Minimal triggers below: exhaustive search over all-zero prompts (stop tokens from their greedy
# continuation), one or two requests, arrivals 0-2, block sizes 1, 2, 3 and 16, chunk size none or 1,
# token budget none or 1, prefix cache off / on, pool unbounded or at its minimum (+0-2), keeping the
# failing traces of the fewest tokens that no reduction of TraceScenario (fuzzcache.scenario) makes smaller.
mutant("abort_leaks_blocks", "lifecycle", "an aborted request's blocks never go back to the pool",
       # aborted once it holds a block: after its one-token prompt, or after the first of two prompt tokens
       "engine.trace: [prompt=1 new=2 abort=1]", "engine.trace: [prompt=2 new=1 abort=1] chunk_size=1",
       "engine.trace: [prompt=2 new=1 abort=1] max_batch_tokens=1", scheduler=AbortLeaksScheduler)
# 8 tokens, every one of these 1-minimal (block size 1, prefix cache on): one request commits its first block,
# the other shares it and still holds it when the first is aborted (at step 2 or later, so the first lives
# three steps: 4 tokens, chunked or not); the sharer's release is then a double free (a crash)
ABORT_SHARED_TRACES = (
    "[prompt=1 new=3 abort=2] [prompt=2 new=2 at=1] block_size=1 prefix_cache=True",
    "[prompt=1 new=3 abort=2] [prompt=3 new=1 at=1] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=1 new=3 abort=3 at=1] [prompt=2 new=2 at=2] block_size=1 prefix_cache=True",
    "[prompt=1 new=3 abort=3 at=1] [prompt=3 new=1 at=2] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=1 new=3 at=1] [prompt=2 new=2 abort=3 at=2] block_size=1 prefix_cache=True",
    "[prompt=1 new=3 at=1] [prompt=3 new=1 abort=3 at=2] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=1 new=3] [prompt=2 new=2 abort=2 at=1] block_size=1 prefix_cache=True",
    "[prompt=1 new=3] [prompt=3 new=1 abort=2 at=1] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=2 new=2 abort=2 at=1] [prompt=1 new=3] block_size=1 prefix_cache=True",
    "[prompt=2 new=2 abort=2 at=1] [prompt=2 new=2] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=2 new=2 abort=2 at=1] [prompt=3 new=1] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=2 new=2 abort=2] [prompt=2 new=2 at=1] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=2 new=2 abort=2] [prompt=3 new=1 at=1] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=2 new=2 abort=3 at=1] [prompt=2 new=2 at=2] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=2 new=2 abort=3 at=1] [prompt=3 new=1 at=2] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=2 new=2 abort=3 at=2] [prompt=1 new=3 at=1] block_size=1 prefix_cache=True",
    "[prompt=2 new=2 abort=3 at=2] [prompt=2 new=2 at=1] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=2 new=2 abort=3 at=2] [prompt=3 new=1 at=1] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=2 new=2 at=1] [prompt=1 new=3 abort=2] block_size=1 prefix_cache=True",
    "[prompt=2 new=2 at=1] [prompt=2 new=2 abort=2] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=2 new=2 at=1] [prompt=2 new=2 abort=3 at=2] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=2 new=2 at=1] [prompt=3 new=1 abort=2] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=2 new=2 at=1] [prompt=3 new=1 abort=3 at=2] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=2 new=2 at=2] [prompt=1 new=3 abort=3 at=1] block_size=1 prefix_cache=True",
    "[prompt=2 new=2 at=2] [prompt=2 new=2 abort=3 at=1] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=2 new=2 at=2] [prompt=3 new=1 abort=3 at=1] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=2 new=2] [prompt=2 new=2 abort=2 at=1] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=2 new=2] [prompt=3 new=1 abort=2 at=1] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=3 new=1 abort=2 at=1] [prompt=1 new=3] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=3 new=1 abort=2 at=1] [prompt=2 new=2] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=3 new=1 abort=2 at=1] [prompt=3 new=1] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=3 new=1 abort=2] [prompt=2 new=2 at=1] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=3 new=1 abort=2] [prompt=3 new=1 at=1] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=3 new=1 abort=3 at=1] [prompt=2 new=2 at=2] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=3 new=1 abort=3 at=1] [prompt=3 new=1 at=2] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=3 new=1 abort=3 at=2] [prompt=1 new=3 at=1] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=3 new=1 abort=3 at=2] [prompt=2 new=2 at=1] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=3 new=1 abort=3 at=2] [prompt=3 new=1 at=1] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=3 new=1 at=1] [prompt=1 new=3 abort=2] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=3 new=1 at=1] [prompt=2 new=2 abort=2] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=3 new=1 at=1] [prompt=2 new=2 abort=3 at=2] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=3 new=1 at=1] [prompt=3 new=1 abort=2] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=3 new=1 at=1] [prompt=3 new=1 abort=3 at=2] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=3 new=1 at=2] [prompt=1 new=3 abort=3 at=1] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=3 new=1 at=2] [prompt=2 new=2 abort=3 at=1] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=3 new=1 at=2] [prompt=3 new=1 abort=3 at=1] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=3 new=1] [prompt=2 new=2 abort=2 at=1] block_size=1 chunk_size=1 prefix_cache=True",
    "[prompt=3 new=1] [prompt=3 new=1 abort=2 at=1] block_size=1 chunk_size=1 prefix_cache=True",
)
mutant("abort_frees_shared_blocks", "lifecycle", "an abort frees blocks another request still holds through the prefix cache",
       *(f"{prop}: {trace}" for prop in ("engine.trace", "engine.same.prefix_cache") for trace in ABORT_SHARED_TRACES),
       scheduler=AbortFreesSharedScheduler)
STOP_UNWRITTEN_TRACES = (  # the first request's stop token (37, its first) commits its unwritten block; the other reads it
    "[prompt=1 new=1 stop=[37]] [prompt=2 new=1 at=1] block_size=1{pool} prefix_cache=True",
    "[prompt=1 new=1 stop=[37]] [prompt=2 new=1] block_size=1{pool} max_batch_tokens=1 prefix_cache=True",
    "[prompt=2 new=1 at=1] [prompt=1 new=1 stop=[37]] block_size=1{pool} prefix_cache=True",
)
mutant("stop_retires_before_kv_write", "lifecycle", "a request ending on a stop token retires before its last KV write, its block already in the prefix cache",
       *(f"{prop}: {trace.format(pool=pool)}" for prop, pool in (("engine.trace", ""), ("engine.same.prefix_cache", ""),
                                                                  ("engine.same.pool", " num_blocks=3")) for trace in STOP_UNWRITTEN_TRACES),
       scheduler=StopBeforeWriteScheduler)
mutant("fork_writes_shared_block", "lifecycle", "a fork writes into the partial block it shares with its siblings: the copy-on-write copy is made, then never used",
       # the first decode after the fork writes into the prompt's partial block: its copy leaks (greedy continuations write
       # the same values, so the shared write itself is invisible, see docs/mutation-score.md)
       "engine.trace: [prompt=1 new=2 n=2]", scheduler=CopyNotUsedScheduler)
mutant("fork_without_reference", "lifecycle", "a fork shares its parent's blocks without taking a reference to them",
       # the second continuation to finish frees the shared block again: a double free
       "engine.trace: [prompt=1 new=2 n=2]", scheduler=ForkWithoutReferenceScheduler)
mutant("stop_one_token_late", "lifecycle", "a request runs one token past its stop token",
       # 37 is the first greedy token after the prompt (0,) on the reference model
       "engine.trace: [prompt=1 new=2 stop=[37]]", scheduler=StopOneLateScheduler)
mutant("preempt_fork_frees_shared", "lifecycle", "preempting one of n continuations frees the blocks its siblings still share",
       # a one-block pool: the first decode after the fork needs a copy of the shared block, so the other continuation
       # is preempted, and frees the block the first still holds
       "engine.trace: [prompt=1 new=2 n=2] num_blocks=1", scheduler=PreemptForkFreesSharedScheduler)


# ---- where two features meet: one feature's bookkeeping on another's path --------------------


class DraftedBlocksCachedScheduler(Scheduler):
    """A verify step offers the blocks it fills to the prefix cache as soon as their KV is written,
    hashed over the drafted tokens, before verification: a rejected draft's slots are then trimmed
    (poisoned) or overwritten by the real token in a block the cache still hands out."""

    def write_and_advance(self, w, logits, new_kv):
        seq = w.seq
        self.ops.scatter(self.pool, seq.block_table, seq.num_computed, new_kv)
        if w.drafts and self.prefix is not None:
            written = (seq.num_computed + w.n) // self.config.block_size
            self.prefix.commit(seq.tokens + w.drafts, seq.block_table, seq.committed_blocks, written)
            seq.committed_blocks = written
        self.advance(w, logits)


class AbortCachesPromptScheduler(Scheduler):
    """An aborted request's prompt blocks go to the prefix cache before they are freed (so its
    prefill is not wasted), counted from the prompt's length instead of the tokens computed: a
    block its chunked prefill only partly wrote is cached."""

    def abort(self, seq):
        if self.prefix is not None and seq.block_table:
            full = min(len(seq.request.prompt) // self.config.block_size, len(seq.block_table))
            self.prefix.commit(seq.tokens, seq.block_table, seq.committed_blocks, full)
            seq.committed_blocks = full
        super().abort(seq)


class PreemptKeepsPrefillProgressScheduler(Scheduler):
    """Preemption resets the progress only of a request that has decoded: one preempted in the
    middle of its chunked prefill keeps it, and when re-admitted (with no prefix hit) resumes
    there, on fresh blocks that hold none of the KV it computed."""

    def preempt(self, seq):
        progress = 0 if seq.output else seq.num_computed
        super().preempt(seq)
        seq.resume_at = progress

    def work_for(self, seq, budget):
        if getattr(seq, "resume_at", 0) and not seq.block_table:  # being (re-)admitted
            seq.num_computed = seq.resume_at
        return super().work_for(seq, budget)


# Each needs two or three rare features at once. Minimal triggers: exhaustive search (tests/trigger_search.py NAME and
# the flags named) over all-zero prompts, one or two requests, arrivals 0-2, block sizes 1, 2, 3 and 16, chunk size
# none or 1, token budget none or 1, prefix cache off / on, pool unbounded or at its minimum (+0-2), listing per property
# every failing trace of the fewest tokens that no reduction of TraceScenario makes smaller (the minimizer's fixed points).

# --spec (spec_k 1-2, every draft), 7 tokens, each with speculative decoding, the prefix cache, blocks of 2 and a second
# request: the verify step of [0] (draft 0, rejected for 37) caches block (0, 0), whose second slot the trim poisons and
# the next verify fills with 37's KV; a later [0, 0, 0] hits it (NaN logits if it arrives at step 1, wrong ones at 2).
# Blocks of 1 hold one token each: the drafts' blocks hold the drafts' own KV, which is right for their hash.
SPEC_DRAFTED = ("[prompt=1 new=2] [prompt=3 new=1 at={at}] block_size=2{knob} prefix_cache=True spec_k=1",
                "[prompt=3 new=1 at={at}] [prompt=1 new=2] block_size=2{knob} prefix_cache=True spec_k=1")
mutant("spec_caches_drafted_blocks", "speculative", "a verify step caches the blocks it fills under the drafted tokens, before verification",
       *(f"{prop}: {trace.format(at=at, knob=knob)}" for prop, knob, arrivals in (
           ("engine.trace", "", (1, 2)), ("engine.same.prefix_cache", "", (1, 2)), ("engine.same.speculative", "", (1, 2)),
           ("engine.same.pool", " num_blocks=3", (1,)), ("engine.same.chunked", " chunk_size=1", (1,)),
           # a budget of one token leaves no room for a draft: config A passes, B (no budget) fails
           ("engine.same.chunked", " max_batch_tokens=1", (1, 2))) for trace in SPEC_DRAFTED for at in arrivals),
       scheduler=DraftedBlocksCachedScheduler)
# --abort (one request aborted 1-3 steps after its arrival), 7 tokens, each with an abort during a chunked prefill
# (chunk_size=1 or a budget of one token), the prefix cache, blocks of 2 and a second request: [0, 0], aborted after its
# first prompt token, caches block (0, 0) with its second slot unwritten; [0, 0, 0] hits it (NaN logits). Without the
# chunking an abort finds a prompt computed whole or not at all; with blocks of 1 every block it holds is written.
ABORT_PARTIAL = ("[prompt=2 new=1 abort=1] [prompt=3 new=1{at}] block_size=2{pool}{chunk} prefix_cache=True",
                 "[prompt=3 new=1 at=1] [prompt=2 new=1 abort=1] block_size=2{pool}{chunk} prefix_cache=True")
mutant("abort_caches_partial_prefill", "lifecycle", "an abort caches the request's prompt blocks, one its chunked prefill only partly wrote too",
       *(f"{prop}: {trace.format(at=at, pool=pool, chunk=chunk)}"
         for prop, pool in (("engine.trace", ""), ("engine.same.prefix_cache", ""), ("engine.same.chunked", ""), ("engine.same.pool", " num_blocks=2"))
         for trace in ABORT_PARTIAL for at, chunk in ((" at=1", " chunk_size=1"), ("", " max_batch_tokens=1"))),
       scheduler=AbortCachesPromptScheduler)
# The base space (and --stop, and --abort, each on its own), 6 tokens, each with a preemption (a pool at its minimum),
# chunked prefill (chunk_size=1) and a second request: the second is preempted after its first prompt token, and
# resumes at its second on fresh blocks (NaN logits). Without chunking a running request has its whole prompt computed,
# so a preempted one has decoded; the prefix cache changes nothing (no hit), but engine.same.prefix_cache needs it on.
PREEMPT_PREFILL = ("[prompt=1 new=2] [prompt=2 new=1] block_size=1 num_blocks=3 chunk_size=1",
                   "[prompt=2 new=1] [prompt=2 new=1] block_size=1 num_blocks=3 chunk_size=1")
mutant("preempt_keeps_prefill_progress", "preemption", "a request preempted mid-prefill resumes at its old position on fresh, unwritten blocks",
       *(f"{prop}: {trace}" for prop in ("engine.trace", "engine.same.pool", "engine.same.chunked") for trace in PREEMPT_PREFILL),
       *(f"engine.same.prefix_cache: {trace} prefix_cache=True" for trace in PREEMPT_PREFILL),
       scheduler=PreemptKeepsPrefillProgressScheduler)


# ---- KV-cache surgery on HF models (fuzzcache.surgery) ----------------------------------------
# (the surgery modules import transformers only when called)


def _theta_inv_freq(model, dim: int) -> torch.Tensor:
    """Default RoPE frequencies for ``dim`` rotary dims from rope_theta alone (float64)."""
    theta = model.config.rope_parameters["rope_theta"]
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def rope_info_theta_only(model):
    """inv_freq recomputed from rope_theta alone: the RoPE type's scaling is forgotten."""
    from fuzzcache.surgery.rotary import rope_info

    info = rope_info(model)
    return dataclasses.replace(info, inv_freq=_theta_inv_freq(model, info.rotary_dim))


def rope_info_whole_head(model):
    """Partial rotary ignored: the whole head_dim rotates, with head_dim's default frequencies."""
    from fuzzcache.surgery.rotary import rope_info

    info = rope_info(model)
    if info.rotary_dim == info.head_dim:
        return info
    return dataclasses.replace(info, rotary_dim=info.head_dim, inv_freq=_theta_inv_freq(model, info.head_dim))


def rope_shift_sign_flipped(keys, delta, info, first_position=0):
    from fuzzcache.surgery.rotary import rope_shift

    return rope_shift(keys, delta, dataclasses.replace(info, inv_freq=-info.inv_freq), first_position)  # rotates by -Δ


def rope_shift_scaled(keys, delta, info, first_position=0):
    """Uses the rotary module's cos/sin, which carry the attention scaling (yarn, longrope), as the shift."""
    from fuzzcache.surgery.rotary import rope_shift

    return rope_shift(keys, delta, info, first_position) * info.attention_scaling


def rope_shift_fp32_angles(keys, delta, info, first_position=0):
    """cos/sin computed in float32, so a float64 round trip has float32 error (the seed's 1e-6 bound hid it)."""
    from fuzzcache.surgery.rotary import check_positions, rotate_half

    check_positions(info, first_position, keys.shape[-2], delta)
    freqs = delta * info.inv_freq.float()  # (R // 2,) float32
    angles = torch.cat((freqs, freqs))  # (R,)
    cos, sin = angles.cos().to(keys.dtype), angles.sin().to(keys.dtype)  # (R,) each
    rot, rest = keys[..., : info.rotary_dim], keys[..., info.rotary_dim :]  # (B, H, T, R), (B, H, T, D - R)
    return torch.cat((rot * cos + rotate_half(rot) * sin, rest), dim=-1)  # (B, H, T, D)


def correct_positions_rotating_bos(cache, delta, info, keep_bos=True, first_position=None, shift=None):
    from fuzzcache.surgery.cache_ops import correct_positions
    from fuzzcache.surgery.rotary import rope_shift

    first = (1 if keep_bos else 0) if first_position is None else first_position
    return correct_positions(cache, delta, info, keep_bos=False, first_position=first, shift=shift or rope_shift)  # BOS rotated with the rest


def keep_document_off_by_one(model, cache, prefix_len, keep_bos=True, info=None, correct=None):
    """With BOS kept, shifts by -prefix_len: the document lands one position too early (at 0, on top of BOS)."""
    from fuzzcache.surgery.cache_ops import correct_positions, layers_of, truncate
    from fuzzcache.surgery.rotary import rope_info

    info, correct = info or rope_info(model), correct or correct_positions
    length = layers_of(cache)[0][0].shape[-2]
    kept = truncate(cache, prefix_len, length, keep_bos)
    return correct(kept, -prefix_len, info, keep_bos, first_position=prefix_len), int(keep_bos) + length - prefix_len


def score_nll_own_rows(model, cache, prompt, answer):
    """Scores each answer token with its own row (row i predicts token i + 1): the slice is one row late."""
    import copy

    from fuzzcache.surgery.cache_ops import answer_nll

    past = copy.deepcopy(cache)
    start, ids = past.get_seq_length(), list(prompt) + list(answer)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), position_ids=torch.arange(start, start + len(ids))[None],
                       past_key_values=past).logits[0].float()  # (P + A, V)
    return answer_nll(logits, len(prompt) + 1, answer)


def suffix_cache_from_position_1(model, passage, query):
    """The passage + query forward starts at position 1 (the BOS slot counted twice)."""
    from transformers import DynamicCache

    ids = list(passage) + list(query)
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), position_ids=torch.arange(1, len(ids) + 1)[None],
                     past_key_values=DynamicCache(), use_cache=True).past_key_values


def split_text_unchecked(tok, prefix, doc):
    """Cuts tokenize(prefix + doc) at len(tokenize(prefix)) without checking the boundary (the seed's way)."""
    from fuzzcache.surgery.bpe import TextSplit, encode

    joined, n = encode(tok, prefix + doc), len(encode(tok, prefix))
    return TextSplit(tuple(joined[:n]), tuple(joined[n:]))


mutant("surgery_theta_without_scaling", "surgery", "the RoPE shift recomputes inv_freq from rope_theta, forgetting the RoPE type's scaling",
       "surgery.rope.model: llama/linear/fp32 p=0 delta=1", surgery={"rope_info": rope_info_theta_only})
mutant("surgery_shift_sign_flipped", "surgery", "the RoPE shift rotates by -Δ",
       "surgery.rope.model: llama/default/fp32 p=0 delta=1", surgery={"rope_shift": rope_shift_sign_flipped})
mutant("surgery_ignores_partial_rotary", "surgery", "the RoPE shift rotates the whole head_dim (partial rotary of Phi / GPT-NeoX ignored)",
       "surgery.rope.model: phi/default/fp32 p=0 delta=1", surgery={"rope_info": rope_info_whole_head})
mutant("surgery_shift_scaled", "surgery", "the RoPE shift uses the rotary's scaled cos/sin, applying yarn/longrope attention scaling twice",
       "surgery.rope.model: llama/yarn/fp32 p=0 delta=0", surgery={"rope_shift": rope_shift_scaled})
mutant("surgery_fp32_angles", "surgery", "the RoPE shift computes cos/sin in float32, so a float64 round trip is off by ~1e-8",
       "surgery.rope.compose: llama/default/fp64 p=0 a=1 b=0", surgery={"rope_shift": rope_shift_fp32_angles})
mutant("surgery_rotates_bos", "surgery", "position correction rotates the kept BOS key too",
       "surgery.rope.bos: llama/default/fp32 bos=True first=1 len=0 delta=1", surgery={"correct_positions": correct_positions_rotating_bos})
mutant("surgery_offset_off_by_one", "surgery", "keeping the document with BOS shifts by -prefix_len instead of -(prefix_len - 1)",
       "surgery.document: llama/default/fp32 prefix=1 doc=1 bos=True", surgery={"keep_document": keep_document_off_by_one})
mutant("surgery_nll_wrong_slice", "surgery", "answer NLL reads each token's own row instead of the row before it",
       "surgery.nll: llama/default/fp32 context=1 keep=1 prompt=1 answer=1", surgery={"score_nll": score_nll_own_rows})
mutant("surgery_suffix_positions_from_1", "surgery", "the suffix cache's forward starts at position 1",
       "surgery.suffix: llama/default/fp32 passage=1 query=0", surgery={"suffix_cache": suffix_cache_from_position_1})
mutant("surgery_split_unchecked", "surgery", "the text split cuts tokenize(prefix + doc) at len(tokenize(prefix)) without checking the boundary",
       # 1 + 1 characters, every pair the trained merges join (the shrinker may stop at any of them)
       *(f"surgery.bpe: prefix={p!r} doc={d!r}" for p, d in (("a", "t"), (" ", "b"), (" ", "t"), ("h", "e"))), surgery={"split_text": split_text_unchecked})
