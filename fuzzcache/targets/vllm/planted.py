"""A planted bug inside vLLM's own code, to show ``vllm:<arch>`` catches bugs where vLLM's users
would hit them:

    fuzzcache fuzz --target fuzzcache.targets.vllm.planted:prefix_hash_not_chained

The bug is patched in only for the planted target's own calls, so an unpatched target in the same
process runs vLLM as shipped.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from fuzzcache.targets.vllm.target import VLLMTarget


@contextmanager
def block_hash_not_chained() -> Iterator[None]:
    """vLLM's block hasher (``kv_cache_utils.hash_block_tokens``, which the KV cache manager's
    prefix lookup keys on) leaves out the parent block's hash: a block hits the prefix cache when
    its own tokens match a cached block's, whatever came before them, and the request reuses KV
    computed after a different prefix."""
    from vllm.v1.core import kv_cache_utils

    original = kv_cache_utils.hash_block_tokens

    def hash_block_tokens(hash_function, parent_block_hash, curr_block_token_ids, extra_keys=None):
        return original(hash_function, None, curr_block_token_ids, extra_keys)

    kv_cache_utils.hash_block_tokens = hash_block_tokens
    try:
        yield
    finally:
        kv_cache_utils.hash_block_tokens = original


class PlantedVLLMTarget(VLLMTarget):
    """A VLLMTarget whose calls run with one planted bug patched into vLLM."""

    def __init__(self, bug, name: str, arch: str = "llama", **options):
        super().__init__(arch, name=name, **options)
        self.bug = bug

    def generate(self, requests, config):
        with self.bug():
            return super().generate(requests, config)


def prefix_hash_not_chained(**options) -> VLLMTarget:
    """vllm:llama with a block's prefix-cache hash left independent of the blocks before it."""
    return PlantedVLLMTarget(block_hash_not_chained, "vllm:llama+prefix_hash_not_chained", **options)
