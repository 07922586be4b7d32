"""The request lifecycle drawn over a trace's requests: stop tokens taken from the oracle's own
greedy continuation (so early stops really happen, at block boundaries too), client aborts
before, during and after prefill, and parallel continuations (``n``). Each is drawn only where
the target declares its feature ("stop", "abort", "fork") and the example's swarm
(strategies.swarm) switched it on, and each shrinks to off."""

from __future__ import annotations

import dataclasses
from typing import Callable

from hypothesis import strategies as st

from fuzzcache.contract import Request
from fuzzcache.strategies.swarm import full_strength

Greedy = Callable[[tuple[int, ...], int], list[int]]  # (prompt, n) -> the oracle's n greedy tokens
MAX_FORKS = 3


def oracle_greedy(target) -> Greedy:
    """The target's oracle continuation (one full forward per token)."""
    from fuzzcache.oracle import greedy_continuation

    return lambda prompt, n: greedy_continuation(target.reference_logits, prompt, n)[0]


@st.composite
def stop_tokens(draw, request: Request, block_size: int, vocab_size: int, greedy: Greedy) -> tuple[int, ...]:
    """One token of the oracle's continuation, half the time one whose stop leaves the written KV
    exactly at a block boundary; sometimes a second token drawn from the whole vocab."""
    continuation = greedy(request.prompt, request.max_new_tokens)
    at_boundary = [i for i in range(len(continuation)) if (len(request.prompt) + i) % block_size == 0]
    index = draw(st.one_of(st.integers(0, len(continuation) - 1), *([st.sampled_from(at_boundary)] if at_boundary else [])))
    extra = draw(st.one_of(st.just(()), st.tuples(st.integers(0, vocab_size - 1))))
    return tuple(dict.fromkeys((continuation[index], *extra)))


@st.composite
def lifecycles(draw, request: Request, features: frozenset[str], block_size: int, vocab_size: int, greedy: Greedy | None,
               swarm: frozenset[str] | None = None) -> Request:
    """``request`` with a stop token, an abort and forks, each in most requests of an example
    whose swarm switched it on (``swarm`` None: every feature the target declares is on), and
    only where the target declares its feature. An abort lands within the request's life:
    during a chunked prefill as often as after it."""
    on = lambda name: name in features and (swarm is None or name in swarm)  # noqa: E731
    fields: dict = {}
    if draw(full_strength(on("stop") and greedy is not None and request.max_new_tokens > 0)):
        fields["stop"] = draw(stop_tokens(request, block_size, vocab_size, greedy))
    if draw(full_strength(on("abort"))):
        chunked = swarm is None or bool({"chunking", "budget"} & swarm)
        life = (len(request.prompt) if chunked else 1) + request.max_new_tokens  # steps it can live, at most
        fields["abort_at"] = request.arrival + draw(st.integers(0, life + 1))
    if draw(full_strength(on("fork"))):
        fields["n"] = draw(st.integers(2, MAX_FORKS))
    return dataclasses.replace(request, **fields)


@st.composite
def with_lifecycles(draw, requests: tuple[Request, ...], features: frozenset[str], block_size: int, vocab_size: int,
                    greedy: Greedy | None, swarm: frozenset[str] | None = None) -> tuple[Request, ...]:
    return tuple(draw(lifecycles(r, features, block_size, vocab_size, greedy, swarm)) for r in requests)
