"""Planted bugs inside vLLM's own code, to show ``vllm:<arch>`` catches bugs where vLLM's users
would hit them:

    fuzzcache fuzz --target fuzzcache.targets.vllm.planted:prefix_hash_not_chained
    fuzzcache fuzz --target fuzzcache.targets.vllm.planted:abort_keeps_blocks
    fuzzcache fuzz --target fuzzcache.targets.vllm.planted:stop_not_trimmed

A bug is patched in only for the planted target's own calls, so an unpatched target in the same
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


@contextmanager
def aborted_blocks_not_freed() -> Iterator[None]:
    """vLLM's client-abort path (``Scheduler.finish_requests`` with FINISHED_ABORTED, reached from
    ``LLMEngine.abort_request``) takes the request out of its queues and forgets it, but never
    returns its KV blocks to the block pool (``_free_request_blocks`` skipped): every block an
    aborted request held (during or after its prefill) is lost to the pool."""
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.request import RequestStatus

    original = Scheduler.finish_requests

    def finish_requests(self, request_ids, finished_status):
        if finished_status != RequestStatus.FINISHED_ABORTED:
            return original(self, request_ids, finished_status)
        self._free_request_blocks = lambda request: None  # on this instance, for this call only
        try:
            return original(self, request_ids, finished_status)
        finally:
            del self._free_request_blocks

    Scheduler.finish_requests = finish_requests
    try:
        yield
    finally:
        Scheduler.finish_requests = original


@contextmanager
def stop_tokens_not_trimmed() -> Iterator[None]:
    """vLLM's scheduler (``Scheduler._update_request_with_output``) stops a request at its stop
    token but no longer trims the tokens after it from a speculative step's output (a step that
    reaches max_tokens is still trimmed): drafts accepted past the stop token reach the client."""
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.core.sched.utils import check_stop

    original = Scheduler._update_request_with_output

    def update(self, request, new_token_ids, is_stale=False):
        stopped = False
        for num_new, token in enumerate(new_token_ids, 1):
            request.append_output_token_ids(token)
            stopped = check_stop(request, self.max_model_len)
            if stopped:
                if request.stop_reason is None:  # the length cap, not a stop token
                    del new_token_ids[num_new:]
                break
        return new_token_ids, stopped

    Scheduler._update_request_with_output = update
    try:
        yield
    finally:
        Scheduler._update_request_with_output = original


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


def abort_keeps_blocks(**options) -> VLLMTarget:
    """vllm:llama whose client abort leaves the aborted request's KV blocks out of the pool."""
    return PlantedVLLMTarget(aborted_blocks_not_freed, "vllm:llama+abort_keeps_blocks", **options)


def stop_not_trimmed(**options) -> VLLMTarget:
    """vllm:llama that emits a speculative step's accepted drafts past a stop token."""
    return PlantedVLLMTarget(stop_tokens_not_trimmed, "vllm:llama+stop_not_trimmed", **options)
