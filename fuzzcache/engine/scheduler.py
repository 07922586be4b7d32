"""The scheduler: composes every fast path into one engine loop.

Each step it (1) gives every running sequence its next piece of work, oldest first,
preempting the newest sequences by recompute when blocks run out; (2) admits arrived
waiting sequences while the sequence limit, token budget and pool allow, reusing cached
prefix blocks; (3) runs all rows in one fused forward or as separate decode / prefill
forwards; (4) scatters new KV into the pool, verifies drafts and trims rejected entries,
commits full blocks to the prefix cache, and retires finished sequences.

The request lifecycle: a request ends at its first stop token; the client's abort (at the
start of step ``abort_at``) frees its blocks; a request with ``n`` > 1 forks when its prompt is
computed: the other continuations share every block of the first (copy-on-write before one
writes into a shared block), and each is preempted, recomputed and retired on its own.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from fuzzcache.contract import Completion, EngineConfig, PoolAccount, Request, with_forks
from fuzzcache.engine.batching import Row
from fuzzcache.engine.ops import DEFAULT_OPS, EngineOps
from fuzzcache.engine.paged import BlockPool, blocks_needed, slot_of
from fuzzcache.model import TinyGPT
from fuzzcache.timeline import StepEvent

STAT_KEYS = ("cached_prefix_tokens", "preemptions", "draft_proposed", "draft_accepted", "fused_steps")


@dataclass
class Sequence:
    """A request in flight: its tokens so far, how many have KV in the pool, and its blocks."""

    request: Request
    fork: int = 0  # which of the request's n continuations
    output: list[int] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)
    num_computed: int = 0  # leading tokens whose KV is in the pool
    block_table: list[int] = field(default_factory=list)
    committed_blocks: int = 0  # leading full blocks already offered to the prefix cache
    stats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAT_KEYS, 0))
    aborted: bool = False
    stopped: bool = False  # ended by a stop token

    @property
    def tokens(self) -> list[int]:
        return list(self.request.prompt) + self.output

    @property
    def done(self) -> bool:
        return self.aborted or self.stopped or len(self.output) >= self.request.max_new_tokens

    @property
    def abort_phase(self) -> int:
        """1 + the ABORT_PHASES index of where an abort now would find this sequence."""
        return 3 if self.output else 2 if self.num_computed else 1


@dataclass
class Work:
    """What one sequence computes this step: ``n`` tokens from ``num_computed`` on, or
    its last token followed by ``drafts`` to verify."""

    seq: Sequence
    n: int
    drafts: list[int]

    @property
    def is_decode(self) -> bool:
        return self.seq.num_computed == len(self.seq.tokens) - 1


class Scheduler:
    """Runs one batch of requests to completion under an EngineConfig."""

    def __init__(self, model: TinyGPT, config: EngineConfig, requests: list[Request], ops: EngineOps = DEFAULT_OPS):
        self.model, self.config, self.ops = model, config, ops
        b = config.block_size
        # an unbounded pool: what every continuation needs, twice (a leaking engine leaks, it does not run out)
        unbounded = 2 * sum(r.n * blocks_needed(len(r.prompt) + r.max_new_tokens + config.spec_k, b) for r in requests)
        self.pool = BlockPool(model.config, config.num_blocks or max(unbounded, 1), b, model.dtype, model.device)
        self.allocator = ops.allocator_class(self.pool)
        self.prefix = ops.prefix_cache_class(self.allocator, b) if config.prefix_cache else None
        self.sequences = [Sequence(r) for r in requests]
        self.forks: list[Sequence] = []  # continuations 2..n, created when their request's prompt is computed
        self.forked: set[int] = set()  # rids whose request has forked
        order = sorted(range(len(requests)), key=lambda i: requests[i].arrival)
        self.waiting: deque[Sequence] = deque(self.sequences[i] for i in order if not self.sequences[i].done)
        self.running: list[Sequence] = []
        self.step = 0
        self.engine_stats = {"steps": 0, "evictions": 0, "prefix_hit_blocks": 0, "fused_steps": 0, "preemptions": 0, "forks": 0}
        self.timeline: list[StepEvent] = []  # what each step did to each sequence (``fuzzcache.timeline``)

    # ---- scheduling -------------------------------------------------------------------

    def work_for(self, seq: Sequence, budget: float) -> Work:
        """The largest piece of work the chunk size and token budget allow."""
        tokens = seq.tokens
        remaining = len(tokens) - seq.num_computed
        if remaining == 1 and self.config.spec_k > 0:
            k = int(min(self.config.spec_k, seq.request.max_new_tokens - len(seq.output) - 1, budget - 1))
            drafts = self.ops.make_draft(self.config.draft, self.model.config.vocab_size, tokens).propose(tokens, k) if k > 0 else []
            return Work(seq, 1 + len(drafts), drafts)
        return Work(seq, int(min(remaining, self.config.chunk_size or remaining, budget)), [])

    def blocks_short(self, work: Work) -> int:
        """Blocks the work needs: new ones past the block table, and copies of shared ones it writes into."""
        return self.new_blocks_needed(work) + len(self.shared_blocks_written(work))

    def new_blocks_needed(self, work: Work) -> int:
        return max(blocks_needed(work.seq.num_computed + work.n, self.config.block_size) - len(work.seq.block_table), 0)

    def shared_blocks_written(self, work: Work) -> list[int]:
        """Logical indices of blocks the work writes into that another sequence also holds (a fork's)."""
        seq, b = work.seq, self.config.block_size
        first, end = seq.num_computed // b, min(blocks_needed(seq.num_computed + work.n, b), len(seq.block_table))
        return [i for i in range(first, end) if self.allocator.ref_count[seq.block_table[i]] > 1]

    def prepare(self, work: Work) -> None:
        """Copy-on-write of the shared blocks the work writes into, then new blocks for the rest."""
        table = work.seq.block_table
        for i in self.shared_blocks_written(work):
            copy = self.allocator.allocate()
            self.pool.copy_block(table[i], copy)
            self.allocator.deallocate(table[i])
            table[i] = copy
        self.grow(work.seq, self.new_blocks_needed(work))

    def grow(self, seq: Sequence, n_blocks: int) -> None:
        seq.block_table.extend(self.allocator.allocate() for _ in range(n_blocks))

    def release(self, seq: Sequence) -> None:
        """Free back to front, so a cached chain's head is the last of it to be evicted."""
        for block in reversed(seq.block_table):
            self.allocator.deallocate(block)
        seq.block_table = []

    def preempt(self, seq: Sequence) -> None:
        """Preemption by recompute: drop the KV; later it re-prefills prompt + output so far."""
        self.release(seq)
        seq.num_computed = 0
        seq.committed_blocks = 0
        seq.stats["preemptions"] += 1
        self.engine_stats["preemptions"] += 1
        self.running.remove(seq)
        self.waiting.appendleft(seq)

    def schedule(self) -> list[Work]:
        budget: float = self.config.max_batch_tokens or float("inf")
        plan: list[Work] = []
        for seq in list(self.running):
            if seq not in self.running or budget < 1:
                continue
            work = self.work_for(seq, budget)
            while not self.allocator.can_allocate(self.blocks_short(work)):
                self.preempt(self.running[-1])  # the newest; may be seq itself
                if seq not in self.running:
                    break
            if seq in self.running:
                self.prepare(work)
                plan.append(work)
                budget -= work.n
        while self.waiting and self.waiting[0].request.arrival <= self.step and len(self.running) < self.config.max_num_seqs and budget >= 1:
            seq = self.waiting[0]
            if self.prefix is not None:
                self.reuse_cached_prefix(seq)
            work = self.work_for(seq, budget)
            if not self.allocator.can_allocate(self.blocks_short(work)):
                self.release(seq)
                seq.num_computed = seq.committed_blocks = 0
                break
            if seq.num_computed:
                seq.stats["cached_prefix_tokens"] += seq.num_computed
                self.engine_stats["prefix_hit_blocks"] += seq.committed_blocks
            self.waiting.popleft()
            self.running.append(seq)
            self.prepare(work)
            plan.append(work)
            budget -= work.n
        return plan

    def reuse_cached_prefix(self, seq: Sequence) -> None:
        """Point the sequence at cached full blocks of its tokens; its last token is always computed."""
        tokens = seq.tokens
        blocks = self.prefix.match(tokens, (len(tokens) - 1) // self.config.block_size)
        seq.block_table = blocks
        seq.committed_blocks = len(blocks)
        seq.num_computed = len(blocks) * self.config.block_size

    # ---- execution --------------------------------------------------------------------

    def execute(self, plan: list[Work]) -> None:
        rows = []
        for w in plan:
            nc = w.seq.num_computed
            new_tokens = w.seq.tokens[nc : nc + w.n - len(w.drafts)] + w.drafts
            cache = self.ops.gather(self.pool, w.seq.block_table, nc) if nc else None
            rows.append(Row(new_tokens, cache))
        results, fused = self.ops.run_step(self.model, rows, [w.is_decode for w in plan], self.config.interleave, self.ops.ragged_forward)
        if fused:
            self.engine_stats["fused_steps"] += 1
        for w, (logits, new_kv) in zip(plan, results):
            if fused:
                w.seq.stats["fused_steps"] += 1
            kind = "verify" if w.drafts else "decode" if w.is_decode else "prefill"
            held, accepted_before = tuple(w.seq.block_table), w.seq.stats["draft_accepted"]
            shared = tuple(b for b in held if self.allocator.ref_count[b] > 1)
            self.write_and_advance(w, logits, new_kv)
            self.timeline.append(StepEvent(self.step, w.seq.request.rid, kind, w.seq.fork, w.n, len(w.drafts),
                                           w.seq.stats["draft_accepted"] - accepted_before, held, shared))

    def write_and_advance(self, w: Work, logits: torch.Tensor, new_kv) -> None:
        """Scatter the work's new KV into the pool, then account for it."""
        self.ops.scatter(self.pool, w.seq.block_table, w.seq.num_computed, new_kv)
        self.advance(w, logits)

    def advance(self, w: Work, logits: torch.Tensor) -> None:
        """Account for the computed tokens: emit, verify drafts, trim, commit, retire."""
        seq = w.seq
        if w.drafts:
            emitted, accepted = self.ops.greedy_verify(logits, w.drafts)
            seq.stats["draft_proposed"] += len(w.drafts)
            seq.stats["draft_accepted"] += accepted
            keep = self.kept_after_verify(seq.num_computed, accepted)
            self.trim_rejected(seq, keep, seq.num_computed + w.n)
            seq.output.extend(emitted)
            seq.logits.extend(logits[: len(emitted)])
            self.check_stop(seq)
            seq.num_computed = min(keep, len(seq.tokens))  # accepted drafts past a stop token are not the sequence's
        else:
            seq.num_computed += w.n
            if seq.num_computed == len(seq.tokens):
                seq.output.append(int(logits[-1].argmax()))
                seq.logits.append(logits[-1])
                self.check_stop(seq)
        if seq.output and seq.request.n > 1 and seq.request.rid not in self.forked:
            self.fork(seq)
        if self.prefix is not None:
            full = seq.num_computed // self.config.block_size
            self.prefix.commit(seq.tokens, seq.block_table, seq.committed_blocks, full)
            seq.committed_blocks = full
        if seq.done:
            self.release(seq)
            self.running.remove(seq)

    def check_stop(self, seq: Sequence) -> None:
        """A stop token ends the sequence; what was emitted past it (accepted drafts) is dropped."""
        cut = next((i + 1 for i, t in enumerate(seq.output) if t in seq.request.stop), None)
        if cut is not None:
            del seq.output[cut:], seq.logits[cut:]
            seq.stopped = True

    def fork(self, parent: Sequence) -> None:
        """The request's other continuations, from its first token on. Each shares every block of
        the parent (a reference each) and runs at once where the sequence limit allows; the
        others wait and recompute the prompt."""
        children = [Sequence(parent.request, fork=j, output=list(parent.output), logits=list(parent.logits), stopped=parent.stopped)
                    for j in range(1, parent.request.n)]
        self.forks += children
        self.forked.add(parent.request.rid)
        waiting = []
        for child in children:
            if child.done:
                continue
            if len(self.running) < self.config.max_num_seqs:
                for block in parent.block_table:
                    self.allocator.share(block)
                child.block_table = list(parent.block_table)
                child.num_computed, child.committed_blocks = parent.num_computed, parent.committed_blocks
                self.running.append(child)
            else:
                child.stats["fork_waited"] = 1  # it runs behind its siblings, from a recompute
                waiting.append(child)
        self.waiting.extendleft(reversed(waiting))
        self.engine_stats["forks"] += len(children)

    def abort(self, seq: Sequence) -> None:
        """The client's abort: the sequence leaves the engine and its blocks are freed."""
        seq.stats["abort_phase"] = seq.abort_phase
        seq.aborted = True
        self.release(seq)

    def abort_due(self) -> None:
        """Abort, at the start of a step, every live sequence of a request whose ``abort_at`` has come."""
        for queue in (self.running, self.waiting):
            for seq in [s for s in queue if s.request.abort_at is not None and s.request.abort_at <= self.step]:
                queue.remove(seq)
                self.abort(seq)
    def kept_after_verify(self, before: int, accepted: int) -> int:
        """Positions with valid KV after a verify pass: the verify token and the accepted drafts."""
        return before + 1 + accepted

    def trim_rejected(self, seq: Sequence, keep: int, written: int) -> None:
        """KV trim in the pool: poison the rejected slots of the last kept block, free (and so
        poison) the blocks past it."""
        kept_blocks = blocks_needed(keep, self.config.block_size)
        block, offset = slot_of(keep, self.config.block_size)
        if keep < written and block < kept_blocks:  # ``keep`` ends inside a block
            self.pool.poison(seq.block_table[block], offset)
        for block in seq.block_table[kept_blocks:]:
            self.allocator.deallocate(block)
        del seq.block_table[kept_blocks:]

    def run(self) -> list[Completion]:
        total = sum(len(s.request.prompt) + s.request.n * s.request.max_new_tokens for s in self.sequences)
        last_arrival = max((s.request.arrival for s in self.sequences), default=0)
        step_limit = last_arrival + 20 * (total + 1) * (len(self.sequences) + 1)
        while self.waiting or self.running:
            if self.step > step_limit:
                raise RuntimeError(f"scheduler made no progress in {step_limit} steps (livelock)")
            before = self.lifecycle_state()
            self.abort_due()
            plan = self.schedule()
            if plan:
                self.execute(plan)
            self.note_lifecycle(before, {id(w.seq) for w in plan})
            self.step += 1
        self.engine_stats["steps"] = self.step
        self.engine_stats["evictions"] = self.allocator.evictions
        self.pool_account = PoolAccount(self.pool.num_blocks, len(self.allocator.free), len(self.allocator.evictable))
        return [with_forks(self.completion(s), [self.completion(f) for f in self.forks if f.request is s.request],
                           s.request.n, self.model.config.vocab_size) for s in self.sequences]

    def lifecycle_state(self) -> dict[int, tuple]:
        return {id(s): (s.stats["preemptions"], s.aborted, s.stopped, s.done) for s in self.sequences + self.forks}

    def note_lifecycle(self, before: dict[int, tuple], scheduled: set[int]) -> None:
        """The step's timeline events besides the work: who forked, was preempted, left, or waited."""
        waiting = {id(s) for s in self.waiting}
        for s in self.sequences + self.forks:
            rid, old = s.request.rid, before.get(id(s))
            if old is None:
                self.timeline.append(StepEvent(self.step, rid, "forked", s.fork))
                old = (s.stats["preemptions"], False, False, False)
            preempted = s.stats["preemptions"] > old[0]
            if preempted:  # also when it was re-admitted and finished in the same step
                self.timeline.append(StepEvent(self.step, rid, "preempted", s.fork))
            if s.done and not old[3]:
                kind = "abort" if s.aborted else "stop" if s.stopped else "finished"
                self.timeline.append(StepEvent(self.step, rid, kind, s.fork))
            elif not preempted and id(s) in waiting and id(s) not in scheduled and s.request.arrival <= self.step:
                self.timeline.append(StepEvent(self.step, rid, "queued", s.fork))

    def completion(self, s: Sequence) -> Completion:
        vocab = self.model.config.vocab_size
        logits = torch.stack(s.logits).float().cpu() if s.logits else torch.empty(0, vocab)
        return Completion(rid=s.request.rid, tokens=list(s.output), logits=logits, stats=dict(s.stats))
