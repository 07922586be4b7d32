"""Hypothesis strategies for fuzzcache: lengths, blocks, chunks, accept counts, batch mixes,
request traces, engine and model configs, KV tensors.

Every strategy shrinks toward the simplest case: one request, a short prompt, block size 1
(or the default), no speculation. The folder ships as ``fuzzcache.strategies`` (pyproject.toml's
package-dir), so an installed fuzzcache adds no top-level ``strategies`` beside a user's own.
"""

from fuzzcache.strategies.engine import batch_mixes, engine_configs, min_pool_blocks, trace_scenarios
from fuzzcache.strategies.lengths import accept_counts, block_sizes, chunk_sizes, max_new_tokens, prompt_lengths
from fuzzcache.strategies.model import kv_tensors, model_configs

__all__ = [
    "accept_counts", "batch_mixes", "block_sizes", "chunk_sizes", "engine_configs", "kv_tensors",
    "max_new_tokens", "min_pool_blocks", "model_configs", "prompt_lengths", "trace_scenarios",
]
