"""Request traces and engine configs drawn over the features a target declares."""

from __future__ import annotations

from hypothesis import strategies as st

from fuzzcache.contract import DRAFTS, EngineConfig, Request, min_blocks_for
from fuzzcache.scenario import TraceScenario
from strategies.lengths import block_sizes, chunk_sizes, max_new_tokens, prompt_lengths

MAX_REQUESTS = 4
MAX_NEW = 8


@st.composite
def batch_mixes(draw, vocab_size: int, max_seq_len: int, block_size: int, max_requests: int = MAX_REQUESTS, max_new: int = MAX_NEW, min_requests: int = 1) -> tuple[Request, ...]:
    """1..max_requests requests: ragged lengths, an optional shared prefix (whole or partial
    blocks), arrivals that often coincide, tokens from an alphabet that is often small (so
    equal blocks recur after different prefixes). Shrinks to one short request at step 0."""
    max_prompt = max(1, min(4 * block_size + 1, max_seq_len - max_new, 40))
    n = draw(st.integers(min_requests, max_requests))
    alphabet = draw(st.one_of(st.integers(1, 3), st.just(vocab_size)))
    token = st.integers(0, alphabet - 1)
    shared_len = draw(st.one_of(st.just(0), prompt_lengths(block_size, max_prompt)))
    shared = draw(st.lists(token, min_size=shared_len, max_size=shared_len))
    requests = []
    for rid in range(n):
        use_shared = shared_len > 0 and draw(st.booleans())
        own = draw(prompt_lengths(block_size, max_prompt))
        prompt = (shared if use_shared else []) + draw(st.lists(token, min_size=own, max_size=own))
        prompt = prompt[: max_seq_len - max_new] or prompt[:1]
        requests.append(Request(rid, tuple(prompt), draw(max_new_tokens(max_new)), draw(st.integers(0, 3))))
    return tuple(requests)


def min_pool_blocks(requests: tuple[Request, ...], config: EngineConfig) -> int:
    """The contract's minimum pool: what the largest single request needs."""
    return max(min_blocks_for(r, config) for r in requests)


@st.composite
def engine_configs(draw, features: frozenset[str], requests: tuple[Request, ...], block_size: int, tight_pool: bool = False) -> EngineConfig:
    """An EngineConfig varying only the fields whose feature the target declares; pools go down
    to the contract's minimum to force eviction and preemption (always, with ``tight_pool``)."""
    fields: dict = {}
    if "paged" in features:
        fields["block_size"] = block_size
    if "batching" in features:
        fields["max_num_seqs"] = draw(st.integers(2 if tight_pool else 1, MAX_REQUESTS))
    if "chunked_prefill" in features:
        fields["chunk_size"] = draw(chunk_sizes())
        fields["max_batch_tokens"] = draw(st.one_of(st.none(), st.integers(1, 16)))
    if "prefix_cache" in features:
        fields["prefix_cache"] = draw(st.booleans())
    if "speculative" in features:
        fields["spec_k"] = draw(st.integers(0, 4))
        if fields["spec_k"]:
            fields["draft"] = draw(st.sampled_from(["trigram", *[d for d in DRAFTS if d != "trigram"]]))
    if "interleave" in features:
        fields["interleave"] = draw(st.booleans())
    config = EngineConfig(**fields)
    if "preemption" in features and "paged" in features and (tight_pool or draw(st.booleans())):
        slack = draw(st.integers(0, 1 if tight_pool else 3))
        config = EngineConfig(**{**fields, "num_blocks": min_pool_blocks(requests, config) + slack})
    return config


@st.composite
def trace_scenarios(draw, features: frozenset[str], vocab_size: int, max_seq_len: int, tight_pool: bool = False) -> TraceScenario:
    """A request trace plus a config over the target's features."""
    block_size = draw(block_sizes()) if "paged" in features else EngineConfig().block_size
    requests = draw(batch_mixes(vocab_size, max_seq_len, block_size, min_requests=2 if tight_pool else 1))  # contention
    return TraceScenario(requests, draw(engine_configs(features, requests, block_size, tight_pool)))
