"""Rare paths of a request trace, scored so that Hypothesis can steer toward them.

Each score is in [0, 1]: 1 means the trace reached the path, less means how close it came
(graded, so that ``hypothesis.target`` can climb toward it). ``steer`` records each reached
path (``rare: <name>``, in the paths report) and hands every score to ``hypothesis.target``,
which keeps the examples that score best and mutates them toward higher scores.

Everything is read from the scenario and the completions (their tokens and the optional
``stats`` of the target contract), so the paths are scored the same way on every target; a
target that reports no stats (preemptions, drafts) never reaches the paths that need them,
and the report says so by their absence.
"""

from __future__ import annotations

from hypothesis import target
from hypothesis.control import currently_in_test_context
from hypothesis.errors import InvalidArgument

from fuzzcache.contract import continuations
from fuzzcache.coverage import reached
from fuzzcache.scenario import TraceScenario

RARE_PATHS = (
    "every draft accepted",  # a request whose drafts were all accepted (the bonus token at every verify)
    "stop on a block boundary",  # a stop token whose KV would start a new block
    "partial block matches a cached block",  # a prompt whose partial last block another request's full block covers
    "abort during prefill",  # a client abort while the prompt is part computed
    "preempted while sharing blocks",  # a preempted request that holds shared blocks (prefix hit or fork)
    "fork behind its siblings",  # one of n continuations waited, was preempted or verified other drafts
)


def _stats(completion) -> dict:
    return getattr(completion, "stats", None) or {}


def every_draft_accepted(scenario: TraceScenario, completions: list) -> float:
    """The best accepted / proposed ratio of any continuation that verified drafts."""
    ratios = [s.get("draft_accepted", 0) / s["draft_proposed"] for c in completions for s in map(_stats, continuations(c)) if s.get("draft_proposed")]
    return max(ratios, default=0.0)


def stop_on_block_boundary(scenario: TraceScenario, completions: list) -> float:
    """1 when a continuation ended on a stop token whose position starts a block; less the
    farther the nearest stop is from a boundary."""
    block = scenario.config.block_size
    best = 0.0
    for req, comp in zip(scenario.requests, completions):
        for each in continuations(comp):
            tokens = list(each.tokens)
            if tokens and tokens[-1] in req.stop:
                offset = (len(req.prompt) + len(tokens) - 1) % block
                best = max(best, 1.0 - min(offset, block - offset) / block)
    return best


def partial_block_matches_cached(scenario: TraceScenario, completions: list) -> float:
    """With the prefix cache on: 1 when a prompt that ends inside a block is a prefix of the
    tokens of a request that arrived no later and covers that whole block; less, the share of
    the prompt the best such request covers."""
    if not scenario.config.prefix_cache:
        return 0.0
    block = scenario.config.block_size
    best = 0.0
    for req in scenario.requests:
        if len(req.prompt) % block == 0:
            continue
        end_of_block = (len(req.prompt) // block + 1) * block
        for other, comp in zip(scenario.requests, completions):
            if other.rid == req.rid or other.arrival > req.arrival:
                continue
            seq = list(other.prompt) + list(comp.tokens)
            common = next((i for i, (a, b) in enumerate(zip(req.prompt, seq)) if a != b), min(len(req.prompt), len(seq)))
            share = common / len(req.prompt)
            best = max(best, share if common < len(req.prompt) or len(seq) >= end_of_block else min(share, 0.99))
    return best


def abort_during_prefill(scenario: TraceScenario, completions: list) -> float:
    """1 for an abort during prefill (the target's ``abort_phase`` 2); 0.5 for an abort before
    or after prefill; 0.25 for one that came after the request ended."""
    best = 0.0
    for req, comp in zip(scenario.requests, completions):
        if req.abort_at is None:
            continue
        phases = {_stats(each).get("abort_phase", 0) for each in continuations(comp)}
        best = max(best, 1.0 if 2 in phases else 0.5 if phases - {0} else 0.25)
    return best


def preempted_while_sharing(scenario: TraceScenario, completions: list) -> float:
    """1 when a continuation was preempted while it held shared blocks (a prefix hit, or one
    of n continuations); 0.5 for one of the two."""
    best = 0.0
    for req, comp in zip(scenario.requests, completions):
        for each in continuations(comp):
            s = _stats(each)
            preempted, sharing = s.get("preemptions", 0) > 0, s.get("cached_prefix_tokens", 0) > 0 or req.n > 1
            best = max(best, (preempted + sharing) / 2)
    return best


def fork_behind_siblings(scenario: TraceScenario, completions: list) -> float:
    """1 when one of a request's n continuations ran behind the others (it waited for a
    sequence slot, or its preemptions or drafts differ from a sibling's); 0.5 for a fork that
    did not."""
    best = 0.0
    for req, comp in zip(scenario.requests, completions):
        if req.n < 2:
            continue
        stats = [_stats(each) for each in continuations(comp)]
        lagged = any(s.get("fork_waited", 0) for s in stats) or any(
            len({s.get(key, 0) for s in stats}) > 1 for key in ("preemptions", "draft_proposed", "draft_accepted"))
        best = max(best, 1.0 if lagged else 0.5)
    return best


SCORES = dict(zip(RARE_PATHS, (every_draft_accepted, stop_on_block_boundary, partial_block_matches_cached,
                                abort_during_prefill, preempted_while_sharing, fork_behind_siblings)))


def steer(scenario: TraceScenario, completions: list) -> dict[str, float]:
    """Score every rare path of this example, record the reached ones and, inside a Hypothesis
    test, steer toward all of them (``hypothesis.target``, one observation per path and example)."""
    scores = {name: score(scenario, completions) for name, score in SCORES.items()}
    for name, value in scores.items():
        if value >= 1.0:
            reached(f"rare: {name}")
        if currently_in_test_context():
            try:
                target(value, label=name)
            except InvalidArgument:  # a second run in one example (a metamorphic check's config B): the first counts
                pass
    return scores
