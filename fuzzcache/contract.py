"""The target contract: what any engine under test implements (ARCHITECTURE.md section 3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import torch

# "stop", "abort", "fork": the request lifecycle (Request.stop, Request.abort_at, Request.n > 1)
LIFECYCLE = frozenset({"stop", "abort", "fork"})
FEATURES = frozenset({"batching", "paged", "prefix_cache", "chunked_prefill", "speculative", "interleave", "preemption"}) | LIFECYCLE
ABORT_PHASES = ("before prefill", "during prefill", "after prefill")  # Completion.stats["abort_phase"] = index + 1
DRAFTS = ("bigram", "trigram", "prompt_lookup")


class EngineError(RuntimeError):
    """Raised by a target whose engine itself reported a request as failed (e.g. a request that
    cannot be scheduled failing the others in its batch); reported as the finding kind
    ``engine_error``. A livelock is a ``TimeoutError`` (finding kind ``hang``)."""


@dataclass(frozen=True)
class Request:
    rid: int
    prompt: tuple[int, ...]
    max_new_tokens: int
    arrival: int = 0  # scheduler step at which the request becomes visible
    stop: tuple[int, ...] = ()  # generation ends at the first generated token in ``stop`` (included)
    abort_at: int | None = None  # the client aborts the request at the start of this step (>= arrival)
    n: int = 1  # parallel greedy continuations of the prompt, sharing its blocks

    def expected_length(self, continuation: Sequence[int]) -> int:
        """Tokens a request that is not aborted returns, given the greedy ``continuation``
        (at least max_new_tokens long): up to and including the first stop token."""
        cut = next((i + 1 for i, t in enumerate(continuation[: self.max_new_tokens]) if t in self.stop), None)
        return self.max_new_tokens if cut is None else cut


@dataclass(frozen=True)
class EngineConfig:
    block_size: int = 16  # KV page size in tokens
    num_blocks: int | None = None  # KV pool size; None = nothing is ever evicted or preempted
    chunk_size: int | None = None  # max prompt tokens per request per step; None = whole prompt
    max_num_seqs: int = 8  # max running requests per step
    max_batch_tokens: int | None = None  # token budget per step; None = unlimited
    prefix_cache: bool = False
    spec_k: int = 0  # draft tokens per step; 0 = off
    draft: str = "trigram"  # "bigram" | "trigram" | "prompt_lookup"
    interleave: bool = False  # decode rows and prefill chunks fused in one forward
    # a server target's own flags beyond what the fields above map to (e.g. llama-server's
    # ("--cache-reuse", "16")); other targets run none. Left out of a corpus file when empty.
    server_flags: tuple[str, ...] = field(default=(), metadata={"omit_if_default": True})


@dataclass
class Completion:
    rid: int
    tokens: list[int]  # max_new_tokens greedy tokens (0 allowed), no EOS; fewer if a stop token or an abort ended them
    logits: torch.Tensor | None = None  # [len(tokens), vocab]: the logits each token was chosen from
    stats: dict[str, int] = field(default_factory=dict)
    # cached_prefix_tokens, preemptions, draft_proposed, draft_accepted; abort_phase (1 + an ABORT_PHASES index)
    # where the abort ended a live request; fork_waited (1: this continuation waited for a sequence slot
    # while a sibling ran)
    forks: list[Completion] = field(default_factory=list)  # continuations 2..n of a request with n > 1


def continuations(completion) -> list:
    """A request's completions: the first continuation and its forks."""
    return [completion, *(getattr(completion, "forks", None) or [])]


def with_forks(first: Completion, forks: list[Completion], n: int, vocab_size: int) -> Completion:
    """A request's Completion: ``first`` with ``forks``, padded to n - 1 with the continuations that
    never forked (the request was aborted before its first token, or asked for none): empty, and
    carrying ``first``'s abort phase."""
    never = {k: v for k, v in first.stats.items() if k == "abort_phase"}
    first.forks = forks + [Completion(first.rid, [], torch.zeros(0, vocab_size), dict(never)) for _ in range(n - 1 - len(forks))]
    return first


@dataclass(frozen=True)
class PoolAccount:
    """A target's pool after a trace (``target.last_pool``), in its own unit (blocks, cells).
    Once every request has finished or been aborted, ``total - free - cached`` is leaked."""

    total: int
    free: int
    cached: int = 0  # held only by the prefix cache, no request references them: not a leak
    unit: str = "blocks"

    @property
    def leaked(self) -> int:
        return self.total - self.free - self.cached


@runtime_checkable
class Target(Protocol):
    name: str
    vocab_size: int
    max_seq_len: int
    features: frozenset[str]  # a subset of FEATURES

    def reference_logits(self, tokens: Sequence[int]) -> torch.Tensor:
        """[len(tokens), vocab] float32 on CPU; one full forward, no cache."""
        ...

    def generate(self, requests: Sequence[Request], config: EngineConfig) -> list:
        """Greedy; one Completion per request, in request order (a request with n > 1: its first
        continuation, the others in ``forks``). Optional after it: ``last_stats`` (engine-wide
        counters) and ``last_pool`` (a PoolAccount, for the leak check)."""
        ...


def min_blocks_for(request: Request, config: EngineConfig) -> int:
    """Blocks the contract guarantees a pool has: the request's prompt, new tokens and spec slack
    (of one continuation: an engine runs the forks of ``n`` one at a time if it must)."""
    return -(-(len(request.prompt) + request.max_new_tokens + config.spec_k) // config.block_size)


def min_pool_blocks(requests: Sequence[Request], config: EngineConfig) -> int:
    """The contract's minimum pool: what the largest single request needs."""
    return max(min_blocks_for(r, config) for r in requests)


def validate_config(config: EngineConfig) -> None:
    """Reject an EngineConfig no engine can run, naming the field."""
    def bad(field_name: str, why: str) -> None:
        raise ValueError(f"EngineConfig.{field_name}={getattr(config, field_name)!r}: {why}")

    if config.block_size < 1:
        bad("block_size", "must be >= 1")
    if config.num_blocks is not None and config.num_blocks < 1:
        bad("num_blocks", "must be >= 1 or None")
    if config.chunk_size is not None and config.chunk_size < 1:
        bad("chunk_size", "must be >= 1 or None")
    if config.max_num_seqs < 1:
        bad("max_num_seqs", "must be >= 1")
    if config.max_batch_tokens is not None and config.max_batch_tokens < 1:
        bad("max_batch_tokens", "must be >= 1 or None")
    if config.spec_k < 0:
        bad("spec_k", "must be >= 0")
    if config.draft not in DRAFTS:
        bad("draft", f"must be one of {', '.join(DRAFTS)}")


def validate_requests(requests: Sequence[Request], config: EngineConfig, vocab_size: int, max_seq_len: int) -> None:
    """Reject requests the contract does not allow, naming the request and the problem."""
    validate_config(config)
    seen: set[int] = set()
    for r in requests:
        if r.rid in seen:
            raise ValueError(f"request rid={r.rid}: duplicate rid")
        seen.add(r.rid)
        if not r.prompt:
            raise ValueError(f"request rid={r.rid}: empty prompt")
        if any(not 0 <= t < vocab_size for t in r.prompt):
            raise ValueError(f"request rid={r.rid}: token outside vocab [0, {vocab_size})")
        if r.max_new_tokens < 0 or r.arrival < 0:
            raise ValueError(f"request rid={r.rid}: max_new_tokens and arrival must be >= 0")
        if any(not 0 <= t < vocab_size for t in r.stop):
            raise ValueError(f"request rid={r.rid}: stop token outside vocab [0, {vocab_size})")
        if r.abort_at is not None and r.abort_at < r.arrival:
            raise ValueError(f"request rid={r.rid}: abort_at={r.abort_at} before its arrival {r.arrival}")
        if r.n < 1:
            raise ValueError(f"request rid={r.rid}: n={r.n}, must be >= 1")
        if len(r.prompt) + r.max_new_tokens > max_seq_len:
            raise ValueError(f"request rid={r.rid}: prompt + max_new_tokens = {len(r.prompt) + r.max_new_tokens} > max_seq_len {max_seq_len}")
        if config.num_blocks is not None and config.num_blocks < min_blocks_for(r, config):
            raise ValueError(
                f"EngineConfig.num_blocks={config.num_blocks}: pool smaller than request rid={r.rid} needs "
                f"({min_blocks_for(r, config)} blocks of {config.block_size} for prompt + max_new_tokens + spec_k)"
            )
