"""The reference engine's replaceable operations, in one place.

The scheduler and the op-level properties call the engine only through an ``EngineOps``,
so a planted bug (a mutant, or a test's monkeypatched copy) is one ``dataclasses.replace``
away and shows in both levels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from fuzzcache.engine import batching, chunked_prefill, drafts, fused_step, kv_cache, paged, prefix_cache, speculative


@dataclass(frozen=True)
class EngineOps:
    prefill: Callable = kv_cache.prefill
    decode_one_token: Callable = kv_cache.decode_one_token
    trim: Callable = kv_cache.trim
    append: Callable = kv_cache.append
    stack_kvs: Callable = batching.stack_kvs
    unstack_kvs: Callable = batching.unstack_kvs
    ragged_forward: Callable = batching.ragged_forward
    gather: Callable = paged.gather
    scatter: Callable = paged.scatter
    chunked_prefill: Callable = chunked_prefill.chunked_prefill
    make_draft: Callable = drafts.make_draft
    greedy_verify: Callable = speculative.greedy_verify
    speculative_sample: Callable = speculative.speculative_sample
    run_step: Callable = fused_step.run_step
    allocator_class: type = paged.BlockAllocator
    prefix_cache_class: type = prefix_cache.PrefixCache


DEFAULT_OPS = EngineOps()
