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

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import torch

from fuzzcache.contract import EngineError, Request


@dataclass
class SteppedResult:
    tokens: list[int]
    cached_prefix_tokens: int = 0
    preemptions: int = 0
    logit_rows: list = field(default_factory=list)  # (V,) float32 scores each new token was chosen from

    def logits(self):
        """(n, V) for the n tokens, or None when the rows cannot be matched to the tokens one to one."""
        if len(self.logit_rows) != len(self.tokens):
            return None
        return torch.stack(self.logit_rows) if self.logit_rows else None


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
    scores = _capture_scores(processor)
    pending = sorted((r for r in requests if r.max_new_tokens > 0), key=lambda r: (r.arrival, r.rid))
    waiting = len(pending)
    step = 0
    while waiting:
        if step >= max_steps:
            raise TimeoutError(f"continuous batching made no progress: {waiting} request(s) unfinished after {step} steps")
        while pending and pending[0].arrival <= step:
            r = pending.pop(0)
            manager.add_request(list(r.prompt), request_id=str(r.rid), max_new_tokens=r.max_new_tokens)
        with _engine_step(step, waiting):
            scheduled = processor.prepare_next_batch()
            if scheduled:
                processor._generation_step(model)
        if scheduled:
            _assign_scores(processor, scores.pop(), run)  # fuzzcache's bookkeeping: its own bugs are crashes
            with _engine_step(step, waiting):
                processor.update_batch()
        while not manager.output_router.output_queue.empty():
            out = manager.output_router.output_queue.get()
            if out.error is not None:
                raise EngineError(f"continuous batching failed request {out.request_id}: {out.error}")
            run.results[int(out.request_id)].tokens = list(out.generated_tokens)
            waiting -= 1
        step += 1
    run.steps = step
    return run


@contextmanager
def _engine_step(step: int, waiting: int):
    """An exception inside the engine's step is what its own loop turns into failing every
    remaining request: an EngineError."""
    try:
        yield
    except Exception as exc:
        raise EngineError(f"continuous batching step {step} failed, failing the {waiting} unfinished request(s): {type(exc).__name__}: {exc}") from exc


def _capture_scores(processor) -> list:
    """Wrap the model runner's sampler to keep the (1, num_logits, V) scores of each step."""
    captured: list = []
    sample = processor.model_runner._sample

    def keeping(scores, output_ids):
        captured.append(scores[0].detach().float().cpu().clone())  # (num_logits, V)
        return sample(scores, output_ids)

    processor.model_runner._sample = keeping
    return captured


def _assign_scores(processor, rows, run: SteppedRun) -> None:
    """Row i of a step's scores belongs to the i-th scheduled request that gets a new token
    (the order ``update_batch`` reads the sampled tokens in)."""
    getting = [fs.state.request_id for fs in processor.inputs_and_outputs.requests_in_batch if fs.has_new_token]
    for row, request_id in zip(rows, getting):
        run.results[int(request_id)].logit_rows.append(row)


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
