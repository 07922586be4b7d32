"""Request traces for server targets (a target with a ``fixed_config``: the server's own flags).

Up to MAX_REQUESTS requests sent over wall-clock ticks (``Request.arrival``), often at once;
prompts that share a prefix of whole blocks or of a partial block, so the prefix cache is hit
under concurrency; repeats of an earlier request later in the trace (cold, then warm); client
aborts after k streamed tokens (``abort_at - arrival``); stop tokens taken from the server's own
greedy continuation; n continuations. Everything shrinks: fewer requests, shorter prompts,
fewer new tokens, arrivals at 0, no lifecycle.
"""

from __future__ import annotations

import dataclasses

from hypothesis import strategies as st

from fuzzcache.contract import Request
from fuzzcache.scenario import TraceScenario
from fuzzcache.strategies.engine import prompts
from fuzzcache.strategies.lifecycle import MAX_FORKS, stop_tokens

MAX_REQUESTS = 8
MAX_NEW = 48  # long enough for requests to overlap and fill a small pool (preemption)
MAX_TICK = 40  # arrivals within MAX_TICK x TICK_S seconds


@st.composite
def request_plans(draw, token: st.SearchStrategy[int], shared: list[int], block_size: int, max_prompt: int, max_new: int) -> tuple:
    """(prompt, max_new_tokens, arrival, repeat) of one request; prompt lengths half the time at
    a block boundary; ``repeat`` (an index, modulo the requests before it) makes it a copy of an
    earlier request, sent later."""
    repeat = draw(st.one_of(st.none(), st.integers(0, MAX_REQUESTS - 1)))
    prefix = shared if shared and draw(st.booleans()) else []
    suffix = draw(prompts(token, block_size, max(1, max_prompt - len(prefix))))
    return tuple(prefix + suffix), draw(st.integers(1, max_new)), draw(st.one_of(st.just(0), st.integers(0, 5), st.integers(0, MAX_TICK))), repeat


@st.composite
def server_trace_scenarios(draw, target) -> TraceScenario:
    """A trace of requests for ``target``'s fixed config (see the module docstring)."""
    config = target.fixed_config
    block = config.block_size
    max_new = min(MAX_NEW, target.max_seq_len // 4)
    max_prompt = min(3 * block + 1, target.max_seq_len - max_new)
    alphabet = draw(st.one_of(st.integers(1, 3), st.just(target.vocab_size)))
    token = st.integers(0, alphabet - 1)
    whole_blocks = st.integers(1, max(1, (max_prompt - 1) // block)).map(lambda k: k * block)
    shared_len = draw(st.one_of(st.just(0), whole_blocks, st.integers(1, max_prompt - 1)))
    shared = draw(st.lists(token, min_size=shared_len, max_size=shared_len))
    plans = draw(st.lists(request_plans(token, shared, block, max_prompt, max_new), min_size=1, max_size=MAX_REQUESTS))
    requests: list[Request] = []
    for rid, (prompt, new, arrival, repeat) in enumerate(plans):
        if repeat is not None and rid:  # a copy of an earlier request, sent after it
            earlier = requests[repeat % rid]
            prompt, new, arrival = earlier.prompt, earlier.max_new_tokens, earlier.arrival + 1 + arrival
        requests.append(Request(rid, prompt, new, arrival))
    greedy = getattr(target, "greedy_continuation", None)
    return TraceScenario(tuple(draw(server_lifecycles(r, target, greedy)) for r in requests), config)


@st.composite
def server_lifecycles(draw, request: Request, target, greedy) -> Request:
    """A stop token, a client abort after k < max_new_tokens streamed tokens, n continuations:
    each about one time in three."""
    fields: dict = {}
    features = frozenset(target.features)
    if "stop" in features and greedy is not None and draw(st.integers(0, 2)) == 2:
        unstoppable = frozenset(getattr(target, "unstoppable", ()))  # tokens the server cannot stop on (llama-server: tokens without text)
        stop = tuple(t for t in draw(stop_tokens(request, target.fixed_config.block_size, target.vocab_size, greedy)) if t not in unstoppable)
        if stop:
            fields["stop"] = stop
    if "abort" in features and draw(st.integers(0, 2)) == 2:
        fields["abort_at"] = request.arrival + draw(st.integers(0, request.max_new_tokens - 1))  # closed before its last token
    if "fork" in features and draw(st.integers(0, 2)) == 2:
        fields["n"] = draw(st.integers(2, MAX_FORKS))
    return dataclasses.replace(request, **fields)
