"""Reductions the minimizer tries (``fuzzcache.minimize``): small generators of smaller
scenarios. The request-trace reductions live here; other scenario types build their own
``reductions(target)`` from the helpers at the top."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Iterator

from fuzzcache.contract import EngineConfig, Request, validate_requests
from fuzzcache.minimize import Reduced

if TYPE_CHECKING:
    from fuzzcache.scenario import TraceScenario

DEFAULT = EngineConfig()


def fewer_items(items: tuple, min_len: int = 0) -> Iterator[tuple]:
    """``items`` with elements deleted: each half, then one element from the end, the start and
    each position between."""
    n = len(items)
    if n <= min_len:
        return
    half = n // 2
    halves = [items[half:], items[:half]] if min(half, n - half) >= max(1, min_len) else []
    singles = [without(items, i) for i in dict.fromkeys([n - 1, 0, *range(1, n - 1)])]
    yield from dict.fromkeys(halves + singles)


def smaller_ints(value: int, low: int = 0) -> Iterator[int]:
    """Smaller values down to ``low``: the lowest first, then halfway, then one less."""
    for v in dict.fromkeys((low, low + (value - low) // 2, value - 1)):
        if low <= v < value:
            yield v


def smaller_blocks(block_size: int, target) -> Iterator[int]:
    """Smaller block sizes the target runs: its declared ``block_sizes``, else down to its ``min_block_size``."""
    declared = getattr(target, "block_sizes", None)
    if declared:
        yield from sorted(b for b in declared if b < block_size)
    else:
        yield from smaller_ints(block_size, max(1, getattr(target, "min_block_size", 1)))


def smaller_tokens(tokens: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    """Token values lowered: all to 0 at once, then each one, the smallest values first."""
    if any(tokens):
        yield (0,) * len(tokens)
    for i, t in enumerate(tokens):
        for v in smaller_ints(t):
            yield tokens[:i] + (v,) + tokens[i + 1 :]


def without(items: tuple, i: int) -> tuple:
    return items[:i] + items[i + 1 :]


def renamed_after_delete(n: int, deleted: int) -> dict[int, int]:
    """Index map of a list of ``n`` after deleting position ``deleted``."""
    return {i: i - (i > deleted) for i in range(n) if i != deleted}


def field_reductions(s, sequences: dict[str, int], counts: dict[str, int] | None = None) -> Iterator:
    """For a scenario dataclass: fewer items in each sequence field (tokens or characters, down to
    its minimum length), each count field lower (down to its minimum), token values lower."""
    for name, min_len in sequences.items():
        for value in fewer_items(getattr(s, name), min_len):
            yield dataclasses.replace(s, **{name: value})
    for name, low in (counts or {}).items():
        for value in smaller_ints(getattr(s, name), low):
            yield dataclasses.replace(s, **{name: value})
    for name in sequences:
        if isinstance(getattr(s, name), tuple):
            for value in smaller_tokens(getattr(s, name)):
                yield dataclasses.replace(s, **{name: value})


def rows_reductions(s, field: str, min_rows: int, min_len: int, counts: dict[str, int] | None = None) -> Iterator:
    """For a scenario with a tuple of token rows (ragged prompts, prefix-sharing prompts): a row
    deleted (ids renamed), then fewer tokens in a row, counts lower, token values lower."""
    rows = getattr(s, field)
    if len(rows) > min_rows:
        for i in range(len(rows) - 1, -1, -1):
            yield Reduced(dataclasses.replace(s, **{field: without(rows, i)}), renamed_after_delete(len(rows), i))
    for i, row in enumerate(rows):
        for fewer in fewer_items(row, min_len):
            yield dataclasses.replace(s, **{field: rows[:i] + (fewer,) + rows[i + 1 :]})
    yield from field_reductions(s, {}, counts)
    for i, row in enumerate(rows):
        for lower in smaller_tokens(row):
            yield dataclasses.replace(s, **{field: rows[:i] + (lower,) + rows[i + 1 :]})


# ---- request traces (engine.*, paths.*) -------------------------------------------------------


def min_pool(requests: tuple[Request, ...], config: EngineConfig) -> int:
    from strategies.engine import min_pool_blocks

    return min_pool_blocks(requests, config) if requests else 1


def pool_cost(s: TraceScenario) -> int:
    """0 for an unbounded pool, else 1 + the slack over the contract's minimum."""
    c = s.config
    return 0 if c.num_blocks is None else 1 + c.num_blocks - min_pool(s.requests, c)


def trace_size_key(s: TraceScenario) -> tuple:
    """Smaller is simpler: total tokens (prompt plus generated, over all requests), requests,
    then each config field toward its default or off (a field at its default does not show in
    the repro, so a smaller block is kept only when it saves tokens), arrivals, token values,
    rid order."""
    c = s.config
    return (
        sum(len(r.prompt) + r.max_new_tokens for r in s.requests),
        len(s.requests),
        0 if c.block_size == DEFAULT.block_size else c.block_size,  # a default field does not show in the repro
        c.chunk_size or 0,
        c.max_batch_tokens or 0,
        c.spec_k,
        pool_cost(s),
        0 if c.max_num_seqs == DEFAULT.max_num_seqs else c.max_num_seqs,
        int(c.prefix_cache),
        int(c.interleave),
        int(c.draft != DEFAULT.draft),
        sum(r.arrival for r in s.requests),
        sum(sum(r.prompt) for r in s.requests),
        sum(abs(r.rid - i) for i, r in enumerate(s.requests)),
    )


def with_pool(s: TraceScenario, requests: tuple[Request, ...], config: EngineConfig) -> Iterator[TraceScenario]:
    """The trace with new requests / config. A pool limit moves to the new contract minimum when
    what the requests need changed (then, if it still fits, it also stays where it was); after a
    block size change, the second try keeps the pool's capacity in tokens instead."""
    from fuzzcache.scenario import TraceScenario

    if config.num_blocks is None:
        yield TraceScenario(requests, config)
        return
    need, had = min_pool(requests, config), min_pool(s.requests, s.config)
    resized = config.block_size != s.config.block_size
    pools = [need] if need != had or resized or config.num_blocks < need else []
    if resized:
        pools.append(max(need, -(-s.config.num_blocks * s.config.block_size // config.block_size)))
    elif config.num_blocks >= need:
        pools.append(config.num_blocks)
    for n in dict.fromkeys(pools):
        yield TraceScenario(requests, dataclasses.replace(config, num_blocks=n))


def config_variants(c: EngineConfig, target) -> Iterator[EngineConfig]:
    """Features off and fields back to their defaults, then smaller values (block size only where
    the target pages, down to its ``min_block_size``)."""
    off = dict(prefix_cache=False, interleave=False, chunk_size=None, max_batch_tokens=None, num_blocks=None,
               max_num_seqs=DEFAULT.max_num_seqs, draft=DEFAULT.draft, block_size=DEFAULT.block_size)
    if c.spec_k:
        yield dataclasses.replace(c, spec_k=0, draft=DEFAULT.draft)
    for name, value in off.items():
        if getattr(c, name) != value:
            yield dataclasses.replace(c, **{name: value})
    if "paged" in getattr(target, "features", ()) and c.block_size != DEFAULT.block_size:  # from the default: only in a trade
        for b in smaller_blocks(c.block_size, target):
            yield dataclasses.replace(c, block_size=b)
    for name in ("chunk_size", "max_batch_tokens", "spec_k"):
        if getattr(c, name):
            for v in smaller_ints(getattr(c, name), 1):
                yield dataclasses.replace(c, **{name: v})
    if c.max_num_seqs != DEFAULT.max_num_seqs:
        for v in smaller_ints(c.max_num_seqs, 1):
            yield dataclasses.replace(c, max_num_seqs=v)


def trace_reductions(s: TraceScenario, target) -> Iterator[TraceScenario | Reduced]:
    """Delete a request; delete prompt tokens (halves, then one from the end, the start, the
    middle); lower max_new_tokens; config features off and values lower; arrivals earlier; token
    values toward 0; fewer tokens traded for a later start or smaller blocks; finally rids
    renumbered 0..n-1. A pool limit follows what the requests need (``with_pool``)."""
    reqs = s.requests
    for fewer in fewer_tokens(reqs):
        yield from with_pool(s, fewer, s.config)
    for config in config_variants(s.config, target):
        yield from with_pool(s, reqs, config)
    if pool_cost(s) > 1:
        yield dataclasses.replace(s, config=dataclasses.replace(s.config, num_blocks=min_pool(reqs, s.config)))
    for i, r in enumerate(reqs):
        for a in smaller_ints(r.arrival):
            yield from with_pool(s, _put(reqs, i, arrival=a), s.config)
    for i, r in enumerate(reqs):
        for prompt in smaller_tokens(r.prompt):
            yield from with_pool(s, _put(reqs, i, prompt=prompt), s.config)
    # Fewer tokens traded for another change: a deleted token or request often gave another
    # request the time or the block boundary it needed, which a later arrival, a token budget,
    # a batch limit or a smaller block gives back.
    for fewer in fewer_tokens(reqs):
        for requests, config in traded(fewer, s.config, target):
            yield from with_pool(s, requests, config)
    if [r.rid for r in reqs] != list(range(len(reqs))):
        renamed = {r.rid: i for i, r in enumerate(reqs)}
        yield Reduced(dataclasses.replace(s, requests=tuple(dataclasses.replace(r, rid=i) for i, r in enumerate(reqs))), renamed)


def fewer_tokens(reqs: tuple[Request, ...]) -> Iterator[tuple[Request, ...]]:
    """A request deleted (the last first); prompt tokens deleted; max_new_tokens lowered (to 1)."""
    for i in range(len(reqs) - 1, -1, -1):
        yield without(reqs, i)
    for i, r in enumerate(reqs):
        for prompt in fewer_items(r.prompt, 1):
            yield _put(reqs, i, prompt=prompt)
    for i, r in enumerate(reqs):
        for n in smaller_ints(r.max_new_tokens, 1):  # a request with 0 new tokens is an edge case of its own, not a smaller one
            yield _put(reqs, i, max_new_tokens=n)


def features_in_use(c: EngineConfig) -> frozenset[str]:
    """The features a config exercises beyond the defaults."""
    used = {"speculative": c.spec_k > 0, "prefix_cache": c.prefix_cache, "interleave": c.interleave,
            "chunked_prefill": c.chunk_size is not None or c.max_batch_tokens is not None,
            "paged": c.block_size != DEFAULT.block_size or c.num_blocks is not None, "preemption": c.num_blocks is not None}
    return frozenset(name for name, on in used.items() if on)


def traded(reqs: tuple[Request, ...], config: EngineConfig, target) -> Iterator[tuple[tuple[Request, ...], EngineConfig]]:
    """What a deleted token may have given the trace, given back another way: one request
    arriving a step later; or, with knobs the config already uses (a trade never turns on a
    path the failure did not take), a token budget of 1 per step, one running request at a
    time, smaller blocks (so fewer tokens fill as many)."""
    for i, r in enumerate(reqs):
        yield _put(reqs, i, arrival=r.arrival + 1), config
    used = features_in_use(config)
    if "chunked_prefill" in used and config.max_batch_tokens != 1:
        yield reqs, dataclasses.replace(config, max_batch_tokens=1)
    if 1 < config.max_num_seqs != DEFAULT.max_num_seqs:
        yield reqs, dataclasses.replace(config, max_num_seqs=1)
    if "paged" in used and "paged" in getattr(target, "features", ()):
        for b in smaller_blocks(config.block_size, target):
            yield reqs, dataclasses.replace(config, block_size=b)


def valid_trace(s: TraceScenario, target) -> bool:
    """A trace the contract allows on ``target`` (the minimizer skips the others unrun)."""
    if not s.requests:
        return False
    try:
        validate_requests(s.requests, s.config, target.vocab_size, target.max_seq_len)
    except ValueError:
        return False
    return True


def _put(reqs: tuple[Request, ...], i: int, **fields) -> tuple[Request, ...]:
    return reqs[:i] + (dataclasses.replace(reqs[i], **fields),) + reqs[i + 1 :]
