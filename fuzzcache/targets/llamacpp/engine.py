"""A serving loop over one llama.cpp context, as llama.cpp's server drives it: every request is a
sequence of one unified KV cache, and each step is one ``llama_decode`` of a shared batch.

Per step: requests whose ``arrival`` step has come join (up to ``max_num_seqs`` running); a new
request first copies the longest prefix it shares with a cached sequence (``seq_cp``, when the
prefix cache is on); the batch takes each running request's decode row (its last token, plus up to
``spec_k`` draft tokens to verify) and then prompt tokens, within ``max_batch_tokens``
(``n_batch``); llama.cpp splits the batch into micro-batches of ``chunk_size`` (``n_ubatch``).
Rejected drafts are removed with ``seq_rm``. When the cache has no room for a batch
(``llama_decode`` returns 1), cached sequences of finished requests are dropped first, then the
request admitted last is preempted (``seq_rm`` of its whole sequence) and later recomputed.

The request lifecycle: a request ends at its first stop token (cells of accepted drafts past it are
removed); the client's abort at the start of step ``abort_at`` removes its sequences (``seq_rm``); a
request with ``n`` > 1 forks once its prompt is computed: each other continuation is a new sequence
that shares the prompt's cells (``seq_cp``), or, past ``max_num_seqs``, waits and recomputes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Sequence

import torch

from fuzzcache.contract import Completion, EngineConfig, EngineError, PoolAccount, Request, with_forks
from fuzzcache.engine.drafts import make_draft
from fuzzcache.targets.llamacpp.library import Context

NO_SLOT = 1  # llama_decode: no memory slot for the batch


@dataclass
class Slot:
    """One request's sequence in the cache (a "slot", as llama.cpp's server calls it)."""

    request: Request
    seq: int  # llama.cpp sequence id
    tokens: list[int]  # prompt + generated so far
    cached: int = 0  # tokens[:cached] are in the cache, at positions 0..cached-1
    generated: list[int] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)  # (V,) per generated token
    stats: dict[str, int] = field(default_factory=lambda: {"cached_prefix_tokens": 0, "preemptions": 0, "draft_proposed": 0, "draft_accepted": 0})
    admitted: int = -1  # step of (re)admission; the latest admitted is preempted first
    fork: int = 0  # which of the request's n continuations
    stopped: bool = False  # ended by a stop token
    aborted: bool = False
    forked: bool = False  # its request's other continuations exist

    @property
    def done(self) -> bool:
        return self.aborted or self.stopped or (len(self.generated) >= self.request.max_new_tokens and self.cached >= len(self.request.prompt))

    @property
    def abort_phase(self) -> int:
        """1 + the ABORT_PHASES index of where an abort now finds this sequence."""
        return 3 if self.generated else 2 if self.cached else 1

    @property
    def in_decode(self) -> bool:
        return self.cached == len(self.tokens) - 1 and len(self.tokens) > len(self.request.prompt)


@dataclass
class Row:
    """Tokens of one sequence in a batch, at positions ``first`` ...: a decode row (the last token
    and its drafts, logits for each) or prompt tokens (logits for the last when they end the prompt)."""

    s: Slot
    tokens: list[int]
    first: int
    decode: bool
    outputs: bool
    drafts: list[int] = field(default_factory=list)


class Server:
    """One ``run`` per ``generate`` call, over a context whose memory is cleared."""

    def __init__(self, ctx: Context, config: EngineConfig, vocab_size: int, trim_extra: int = 0, abort_frees: bool = True, max_seqs: int = 7):
        self.ctx, self.config, self.vocab_size = ctx, config, vocab_size
        self.trim_extra = trim_extra  # planted bugs only: positions left behind after a rejected draft
        self.abort_frees = abort_frees  # planted bugs only: False = an abort leaves its cells in the cache
        self.max_seqs = max_seqs  # sequence ids 0 .. max_seqs - 1 are the requests' and their forks
        self.budget = config.max_batch_tokens or ctx.shape.n_batch
        self.stats = {"steps": 0, "evictions": 0, "preemptions": 0, "no_slot": 0, "forks": 0}
        self.pool: PoolAccount | None = None

    def run(self, requests: Sequence[Request]) -> list[Completion]:
        config = self.config
        if sum(r.n for r in requests) > self.max_seqs:
            raise ValueError(f"{sum(r.n for r in requests)} continuations: this target runs at most {self.max_seqs} sequences at once")
        seqs = [Slot(r, i, list(r.prompt)) for i, r in enumerate(requests)]  # sequence id = request index
        self.next_seq = len(seqs)  # forks take the ids after them
        self.forks: list[Slot] = []
        pending = sorted(seqs, key=lambda s: (s.request.arrival, s.seq))
        waiting: list[Slot] = []
        running: list[Slot] = []
        idle: list[Slot] = []  # finished, their cells kept for prefix reuse
        self.held = False  # after a preemption, nothing joins until a request finishes (or none runs)
        step, limit = 0, 8 * sum(len(r.prompt) + r.n * r.max_new_tokens + 1 for r in requests) + max(r.arrival for r in requests) + 16
        while pending or waiting or running:
            while pending and pending[0].request.arrival <= step:
                waiting.append(pending.pop(0))
            self._abort_due(step, waiting, running)
            while waiting and len(running) < config.max_num_seqs and not (self.held and running):
                s = waiting.pop(0)
                s.admitted = step
                if config.prefix_cache and s.cached == 0:
                    self._reuse_prefix(s, running + idle)
                running.append(s)
            if running:
                rows = self._batch(running)
                rc = self.ctx.decode([(t, row.first + i, row.s.seq, row.outputs) for row in rows for i, t in enumerate(row.tokens)])
                if rc == NO_SLOT:
                    self.stats["no_slot"] += 1
                    self._make_room(running, waiting, idle)
                    continue
                if rc != 0:
                    raise EngineError(f"llama_decode returned {rc} for a batch of {sum(len(r.tokens) for r in rows)} tokens")
                self._advance(rows)
                self._fork_new(rows, running, waiting)
                for s in [s for s in running if s.done]:
                    running.remove(s)
                    self.held = False
                    if config.prefix_cache:
                        idle.append(s)
                    else:
                        self.ctx.seq_rm(s.seq)
            step += 1
            self.stats["steps"] = step
            if step > limit:
                raise TimeoutError(f"llama.cpp server loop did not finish in {limit} steps")
        self.pool = self._account(seqs + self.forks, idle)
        return [with_forks(self._completion(s), [self._completion(f) for f in self.forks if f.request is s.request], s.request.n, self.vocab_size)
                for s in seqs]

    def _completion(self, s: Slot) -> Completion:
        return Completion(s.request.rid, s.generated, torch.stack(s.logits) if s.logits else torch.zeros(0, self.vocab_size), s.stats)

    def _abort_due(self, step: int, waiting: list[Slot], running: list[Slot]) -> None:
        """The client's aborts: every live sequence of a request whose ``abort_at`` has come leaves, its cells removed."""
        for queue in (running, waiting):
            for s in [s for s in queue if s.request.abort_at is not None and s.request.abort_at <= step]:
                queue.remove(s)
                s.stats["abort_phase"] = s.abort_phase
                s.aborted = True
                if self.abort_frees:
                    self.ctx.seq_rm(s.seq)

    def _fork_new(self, rows: list[Row], running: list[Slot], waiting: list[Slot]) -> None:
        """A request with n > 1 whose first token came this step forks: each other continuation is
        a new sequence, sharing the parent's cells (``seq_cp``) where it can run at once."""
        for s in [row.s for row in rows if row.s.request.n > 1 and row.s.fork == 0 and row.s.generated and not row.s.forked]:
            s.forked = True
            for j in range(1, s.request.n):
                child = Slot(s.request, self.next_seq, list(s.tokens), generated=list(s.generated), logits=list(s.logits), fork=j, stopped=s.stopped)
                self.next_seq += 1
                self.forks.append(child)
                self.stats["forks"] += 1
                if child.stopped or len(child.generated) >= s.request.max_new_tokens:
                    continue  # its first token was its last
                if len(running) < self.config.max_num_seqs:
                    self.ctx.seq_cp(s.seq, child.seq, 0, s.cached)
                    child.cached, child.admitted = s.cached, s.admitted
                    running.append(child)
                else:
                    waiting.insert(0, child)

    def _account(self, slots: list[Slot], idle: list[Slot]) -> PoolAccount:
        """The cells each request sequence still holds (llama.cpp has no count of free cells): all
        but the sequences kept for prefix reuse must hold none."""
        def held(s: Slot) -> int:
            last = self.ctx.pos_max(s.seq)
            return 0 if last < 0 else last - self.ctx.pos_min(s.seq) + 1

        total = sum(held(s) for s in slots)
        return PoolAccount(total, 0, sum(held(s) for s in idle), unit="cells held by request sequences")

    def _reuse_prefix(self, s: Slot, cached: list[Slot]) -> None:
        """Copy the longest prefix ``s`` shares with a cached sequence (never its last token, whose
        logits it needs). With sliding-window layers only a whole cached sequence is copied: the
        SWA cache hands a sequence's cells that fell out of its window to any later token
        (llama-kv-cache.cpp ``find_slot``: "SWA mask ... can_use = true"), so the last W
        positions of a shorter prefix may be gone (llama-server re-processes such a prompt)."""
        best, source = 0, None
        for other in cached:
            n = 0
            limit = min(other.cached, len(s.tokens) - 1)
            while n < limit and other.tokens[n] == s.tokens[n]:
                n += 1
            if self.ctx.window and n < other.cached:
                continue
            if n > best:
                best, source = n, other
        if source is not None:
            self.ctx.seq_cp(source.seq, s.seq, 0, best)
            s.cached = best
            s.stats["cached_prefix_tokens"] = max(s.stats["cached_prefix_tokens"], best)

    def _batch(self, running: list[Slot]) -> list[Row]:
        """Decode rows (with drafts) first, then prompt tokens, within the step's token budget."""
        budget, rows = self.budget, []
        for s in running:
            if s.in_decode and budget > 0:
                drafts = self._drafts(s, budget - 1)
                rows.append(Row(s, [s.tokens[-1]] + drafts, s.cached, decode=True, outputs=True, drafts=drafts))
                budget -= 1 + len(drafts)
        for s in running:
            todo = len(s.tokens) - s.cached
            if not s.in_decode and todo > 0 and budget > 0:
                n = min(todo, budget)
                wants_token = s.cached + n == len(s.tokens) and len(s.generated) < s.request.max_new_tokens
                rows.append(Row(s, s.tokens[s.cached : s.cached + n], s.cached, decode=False, outputs=wants_token))
                budget -= n
        return rows

    def _drafts(self, s: Slot, room: int) -> list[int]:
        k = min(self.config.spec_k, room, s.request.max_new_tokens - len(s.generated) - 1)
        if k <= 0:
            return []
        drafts = make_draft(self.config.draft, self.vocab_size, s.tokens).propose(s.tokens, k)[:k]
        s.stats["draft_proposed"] += len(drafts)
        return drafts

    def _advance(self, rows: list[Row]) -> None:
        """Read each row's logits (batch order), accept drafts greedily, trim rejected ones."""
        index = 0
        for row in rows:
            s, n = row.s, len(row.tokens)
            if row.decode:
                chosen = [self.ctx.logits(index + i) for i in range(n)]  # (V,) each
                accepted = 0
                while accepted < len(row.drafts) and int(chosen[accepted].argmax()) == row.drafts[accepted]:
                    accepted += 1
                s.stats["draft_accepted"] += accepted
                new = row.drafts[:accepted] + [int(chosen[accepted].argmax())]
                new = self._until_stop(s, new)
                s.logits += chosen[: len(new)]
                s.generated += new
                s.tokens += new
                s.cached += 1 + accepted
                if accepted < len(row.drafts):  # rejected drafts' cells go
                    self.ctx.seq_rm(s.seq, s.cached + self.trim_extra, -1)
                if s.cached > len(s.tokens):  # accepted drafts past a stop token are not the sequence's
                    self.ctx.seq_rm(s.seq, len(s.tokens), -1)
                    s.cached = len(s.tokens)
            else:
                s.cached += n
                if row.outputs:
                    last = self.ctx.logits(index + n - 1)
                    s.logits.append(last)
                    token = int(last.argmax())
                    s.generated.append(token)
                    s.tokens.append(token)
                    s.stopped = token in s.request.stop
            index += n

    @staticmethod
    def _until_stop(s: Slot, new: list[int]) -> list[int]:
        """``new`` up to and including its first stop token (which ends the request)."""
        cut = next((i + 1 for i, t in enumerate(new) if t in s.request.stop), None)
        if cut is None:
            return new
        s.stopped = True
        return new[:cut]

    def _make_room(self, running: list[Slot], waiting: list[Slot], idle: list[Slot]) -> None:
        """The batch found no room: drop finished requests' cached cells, else preempt the request admitted last."""
        if idle:
            for s in idle:
                self.ctx.seq_rm(s.seq)
            self.stats["evictions"] += len(idle)
            idle.clear()
            return
        if len(running) == 1:
            s = running[0]
            raise EngineError(f"request rid={s.request.rid} alone does not fit the cache ({s.cached} cached, {len(s.tokens) - s.cached} to go)")
        victim = max(running, key=lambda s: (s.admitted, s.seq))
        running.remove(victim)
        self.ctx.seq_rm(victim.seq)
        victim.cached = 0
        victim.stats["preemptions"] += 1
        self.stats["preemptions"] += 1
        waiting.insert(0, victim)
        self.held = True
