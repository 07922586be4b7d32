"""transformers' continuous-batching engine (paged KV cache, block sharing, offloading), stepped
in the caller's thread.

``generate_batch`` runs the engine in a background thread and takes about half a second of
fixed overhead per call here; requests added while it runs land at whatever step the thread
happens to be in. Instead we build the same ``ContinuousBatchingManager`` and drive its batch
processor ourselves, one scheduler step at a time: the step a request arrives at is then exact,
runs are deterministic, a call costs about 10 ms of set-up, and the hang guard (a main-thread
alarm) can interrupt it. This uses the manager's ``_create_batch_processor`` and the
processor's ``_generation_step``, the two calls its own loop makes (transformers 5.x).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

from fuzzcache.contract import EngineError, Request

logging.getLogger("ContinuousBatchingLogger").setLevel(logging.CRITICAL)  # psutil and flash-attention notices


@dataclass
class SteppedResult:
    tokens: list[int]
    cached_prefix_tokens: int = 0
    preemptions: int = 0


@dataclass
class SteppedRun:
    results: dict[int, SteppedResult] = field(default_factory=dict)
    steps: int = 0


def stepped_generate(model, generation_config, cb_config, requests: Sequence[Request], max_steps: int) -> SteppedRun:
    """Run ``requests`` (each added at its arrival step) through a fresh continuous-batching
    manager on ``model``; greedy, no EOS. Raises EngineError when the engine fails a request and
    TimeoutError when it stops making progress (livelock)."""
    manager = model.init_continuous_batching(generation_config=generation_config, continuous_batching_config=cb_config)
    processor = manager._create_batch_processor()
    run = SteppedRun()
    _count_prefix_hits(processor, run, requests)
    _count_offloads(processor, run)
    pending = sorted((r for r in requests if r.max_new_tokens > 0), key=lambda r: (r.arrival, r.rid))
    waiting = len(pending)
    step = 0
    while waiting:
        if step >= max_steps:
            raise TimeoutError(f"continuous batching made no progress: {waiting} request(s) unfinished after {step} steps")
        while pending and pending[0].arrival <= step:
            r = pending.pop(0)
            manager.add_request(list(r.prompt), request_id=str(r.rid), max_new_tokens=r.max_new_tokens)
        try:
            if processor.prepare_next_batch():
                processor._generation_step(model)
                processor.update_batch()
        except Exception as exc:  # the engine's own loop fails every remaining request on this
            raise EngineError(f"continuous batching step {step} failed, failing the {waiting} unfinished request(s): {type(exc).__name__}: {exc}") from exc
        while not manager.output_router.output_queue.empty():
            out = manager.output_router.output_queue.get()
            if out.error is not None:
                raise EngineError(f"continuous batching failed request {out.request_id}: {out.error}")
            run.results[int(out.request_id)].tokens = list(out.generated_tokens)
            waiting -= 1
        step += 1
    run.steps = step
    return run


def _count_prefix_hits(processor, run: SteppedRun, requests: Sequence[Request]) -> None:
    """Wrap the cache's prefix search to record each request's shared prompt tokens."""
    for r in requests:
        run.results[r.rid] = SteppedResult(tokens=[])
    search = processor.cache.search_prefix_match

    def counted(request_id: str, prompt_ids: list[int]) -> int:
        matched = search(request_id, prompt_ids)
        result = run.results[int(request_id)]
        result.cached_prefix_tokens = max(result.cached_prefix_tokens, matched)  # a requeued request searches again
        return matched

    processor.cache.search_prefix_match = counted


def _count_offloads(processor, run: SteppedRun) -> None:
    """Wrap the offloading manager to count preemptions (requests offloaded or soft-reset)."""
    manager = processor.offloading_manager
    offload = manager.offload_requests

    def counted() -> bool:
        before = {s.request_id for s in processor.scheduler.active_requests.values()}
        done = offload()
        after = {s.request_id for s in processor.scheduler.active_requests.values()}
        for rid in before - after:
            run.results[int(rid)].preemptions += 1
        return done

    manager.offload_requests = counted
