"""transformers' continuous-batching engine (paged KV cache, block sharing, offloading), stepped
in the caller's thread.

``generate_batch`` runs the engine in a background thread and takes about half a second of
fixed overhead per call here; requests added while it runs land at whatever step the thread
happens to be in. Instead we build the same ``ContinuousBatchingManager`` and drive its batch
processor ourselves, one scheduler step at a time: the step a request arrives at is then exact,
runs are deterministic, a call costs about 10 ms of set-up, and the hang guard (a main-thread
alarm) can interrupt it. This uses the manager's ``_create_batch_processor`` and the
processor's ``_generation_step``, the two calls its own loop makes (transformers 5.x).

The request lifecycle maps onto the manager's own API: a request's stop tokens are its
``eos_token_id`` (``add_request``; ``RequestState.update_and_check_completion`` keeps the EOS
token in ``generated_tokens``); an abort is ``cancel_request`` at the start of the abort step;
``n`` is ``num_children = num_return_sequences - 1`` (``add_request`` reads the manager's
``num_return_sequences``, set per request here): the scheduler prefills all but the last prompt
token, then forks the request, sharing its complete blocks and copying the partial one. After the
last request ends, ``pool_account`` reads the paged cache's pool for the leak check.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from fuzzcache.contract import EngineError, PoolAccount, Request

Key = tuple[int, int]  # (rid, continuation): 0 is the request itself, k >= 1 its (k-1)-th fork


@dataclass
class SteppedResult:
    tokens: list[int]
    cached_prefix_tokens: int = 0
    preemptions: int = 0
    abort_phase: int = 0  # 1 + an ABORT_PHASES index where an abort ended it while live, else 0
    logit_rows: list = field(default_factory=list)  # (V,) float32 scores each new token was chosen from

    def logits(self):
        """(n, V) for the n tokens, or None when the rows cannot be matched to the tokens one to one."""
        if len(self.logit_rows) != len(self.tokens):
            return None
        return torch.stack(self.logit_rows) if self.logit_rows else None


@dataclass
class SteppedRun:
    results: dict[Key, SteppedResult] = field(default_factory=dict)
    steps: int = 0
    pool: PoolAccount | None = None  # the paged cache once every request ended


def engine_id(key: Key) -> str:
    """transformers' request id of a continuation: forks are ``f"{parent}__child#{i}"``
    (``ContinuousBatchProcessor.update_batch``, continuous_api.py:591)."""
    rid, k = key
    return str(rid) if k == 0 else f"{rid}__child#{k - 1}"


def key_of(request_id: str) -> Key:
    rid, _, child = request_id.partition("__child#")
    return int(rid), int(child) + 1 if child else 0


def stepped_generate(model, generation_config, cb_config, requests: Sequence[Request], max_steps: int,
                     engine_hook: Callable | None = None, recorder=None) -> SteppedRun:
    """Run ``requests`` (each added at its arrival step, aborted at its abort step) through a
    fresh continuous-batching manager on ``model``; greedy, EOS = each request's stop tokens,
    ``n - 1`` forks per request. Raises EngineError when the engine fails a request and
    TimeoutError when it stops making progress (livelock). ``engine_hook(manager, processor)``
    runs once before the first step (planted bugs); ``recorder`` (a ``steps.StepRecorder``) sees
    every step's outcome."""
    manager = model.init_continuous_batching(generation_config=generation_config, continuous_batching_config=cb_config)
    processor = manager._create_batch_processor()
    if engine_hook is not None:
        engine_hook(manager, processor)
    run = SteppedRun()
    live = [r for r in requests if r.max_new_tokens > 0]
    run.results = {(r.rid, k): SteppedResult(tokens=[]) for r in live for k in range(r.n)}
    _count_prefix_hits(processor, run)
    _count_offloads(processor, run)
    scores = _capture_scores(processor)
    pending = sorted(live, key=lambda r: (r.arrival, r.rid))
    aborts = sorted((r for r in live if r.abort_at is not None), key=lambda r: (r.abort_at, r.rid))
    unfinished = set(run.results)  # continuations neither delivered nor aborted
    step = 0
    while unfinished:
        if step >= max_steps:
            raise TimeoutError(f"continuous batching made no progress: {len(unfinished)} request(s) unfinished after {step} steps")
        while pending and pending[0].arrival <= step:
            r = pending.pop(0)
            manager.num_return_sequences = r.n  # add_request gives the request num_return_sequences - 1 children
            manager.add_request(list(r.prompt), request_id=str(r.rid), max_new_tokens=r.max_new_tokens, eos_token_id=list(r.stop) or None)
        while aborts and aborts[0].abort_at <= step:
            abort_request(manager, processor, aborts.pop(0), run, unfinished)
        with _engine_step(step, len(unfinished)):
            scheduled = processor.prepare_next_batch()  # drains the new requests, then the cancellations
            if scheduled:
                processor._generation_step(model)
        if scheduled:
            _assign_scores(processor, scores.pop(), run)  # fuzzcache's bookkeeping: its own bugs are crashes
            with _engine_step(step, len(unfinished)):
                processor.update_batch()
        while not manager.output_router.output_queue.empty():
            out = manager.output_router.output_queue.get()
            if out.error is not None:
                raise EngineError(f"continuous batching failed request {out.request_id}: {out.error}")
            key = key_of(out.request_id)
            run.results[key].tokens = list(out.generated_tokens)
            unfinished.discard(key)
        if recorder is not None:
            recorder.after_step(step, manager, processor, run, unfinished)
        step += 1
    run.steps = step
    run.pool = pool_account(processor.cache)
    return run


def abort_request(manager, processor, request: Request, run: SteppedRun, unfinished: set[Key]) -> None:
    """The client's abort at the start of a step: ``manager.cancel_request`` for each live
    continuation (the processor drains the cancellations in ``prepare_next_batch`` before it
    schedules, and ``Scheduler.clear_cancelled_requests`` frees their blocks). The tokens are what
    the continuation had emitted; its phase is read from the request state. A fork not created yet
    (the parent is aborted before it forks) ends with the parent's phase and no tokens."""
    parent_phase = 1
    for k in range(request.n):
        key = (request.rid, k)
        if key not in unfinished:
            continue  # finished before the abort
        unfinished.discard(key)
        result = run.results[key]
        state = find_state(manager, processor, engine_id(key))
        if state is None:
            result.abort_phase = parent_phase
            continue
        result.tokens = list(state.to_generation_output().generated_tokens)
        result.abort_phase = abort_phase(state)
        parent_phase = parent_phase if k else result.abort_phase
        manager.cancel_request(engine_id(key))


def find_state(manager, processor, request_id: str):
    """The RequestState of ``request_id``: scheduled, waiting, or added this step (still in the
    manager's input queue); None if the engine has never seen it (a fork not created yet)."""
    scheduler = processor.scheduler
    state = scheduler.active_requests.get(request_id) or scheduler.waiting_requests.get(request_id)
    if state is None:
        state = next((s for s in list(manager.input_queue.queue) if s.request_id == request_id), None)
    return state


def abort_phase(state) -> int:
    """1 + the ABORT_PHASES index: after prefill once a token was emitted (a soft-reset request's
    emitted tokens are in its ``initial_tokens`` past ``_true_initial_tokens``), during prefill once
    a prompt token has KV (``position_offset`` counts computed and prefix-shared positions), else before."""
    if state.to_generation_output().generated_tokens:
        return 3
    return 2 if state.position_offset > 0 else 1


def pool_account(cache) -> PoolAccount:
    """The paged cache's pool. Each allocator (one per attention type) holds whole sectors from
    the CachePool, split into its blocks: a block is free in the pool (a free sector, or a free leaf
    of an allocator's sector), cached (``BlockLedger.cached_blocks``: complete, hashed and referenced
    by no request, kept for prefix reuse) or held by a request. With one allocator the unit is its
    block (page_size tokens of every layer); with several, bytes."""
    allocators = list(cache.cache_allocators.values())
    pool = cache.pool
    if len(allocators) == 1:
        a = allocators[0]
        free = pool.num_free_sectors * a.blocks_per_sector + pool.count_free_blocks(a.index)
        return PoolAccount(cache.num_sectors * a.blocks_per_sector, free, len(a.ledger.cached_blocks))
    free = pool.num_free_sectors * cache.bytes_per_sector + sum(pool.count_free_blocks(a.index) * a.bytes_per_block for a in allocators)
    cached = sum(len(a.ledger.cached_blocks) * a.bytes_per_block for a in allocators)
    return PoolAccount(cache.num_sectors * cache.bytes_per_sector, free, cached, unit="bytes")


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
        run.results[key_of(request_id)].logit_rows.append(row)


def _count_prefix_hits(processor, run: SteppedRun) -> None:
    """Wrap the cache's prefix search to record each request's shared prompt tokens."""
    search = processor.cache.search_prefix_match

    def counted(request_id: str, prompt_ids: list[int]) -> int:
        matched = search(request_id, prompt_ids)
        result = run.results[key_of(request_id)]
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
            run.results[key_of(rid)].preemptions += 1
        return done

    manager.offload_requests = counted
